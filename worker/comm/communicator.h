// The data-plane communicator: the narrow collective interface the MoE dispatch/combine runs on.
//
// A Communicator is one rank's handle on a fixed group of world_size() ranks. It offers exactly
// what expert parallelism needs (DESIGN.md §5): an all-to-all-v over raw bytes, an all-gather of a
// fixed number of bytes per rank, a barrier, and Abort. Implementations: in-process loopback
// (threads as ranks), Gloo over TCP (CPU processes), NCCL (GPU, stream-ordered), and a
// fault-injecting wrapper.
//
// Failure model (DESIGN.md §10): every call returns an absl::Status, and a peer that dies, stalls
// or is cut off becomes an error on every other rank within CommunicatorOptions::timeout, never a
// hang:
//  - DEADLINE_EXCEEDED: a peer did not arrive in time (stalled, or died with its sockets open);
//  - UNAVAILABLE: the transport to a peer broke (peer process exited, connection reset);
//  - ABORTED: Abort() was called on this or another rank, or an earlier call failed;
//  - INVALID_ARGUMENT: malformed arguments (sizes, or counts that do not match the peer's).
// A communicator that returned any error is broken for good (fail-stop): it aborts itself so that
// the other ranks fail promptly too, and every later call fails fast with ABORTED (a rank that
// bails out of a collective would otherwise leave its peers waiting, so even INVALID_ARGUMENT
// breaks the group). Recovery means building a new group (the coordinator's job), never retrying
// on the old one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace switchyard {

struct CommunicatorOptions {
  // Bound on any one collective, measured on each rank from the moment it enters the call.
  absl::Duration timeout = absl::Seconds(60);
  // Bound on building the group (rendezvous and connecting to every peer).
  absl::Duration connect_timeout = absl::Seconds(120);
};

// Where the buffers passed to a communicator must live.
enum class MemorySpace { kHost, kDevice };

// One side of an all-to-all-v: a byte buffer and, per peer rank, how many bytes go to (or come
// from) that peer and at which byte offset of the buffer they start. Regions may be in any order
// but must not overlap on the receive side. Both vectors have world_size entries.
struct AllToAllVBuffer {
  void* data = nullptr;  // const for the send side; may be null when every count is 0
  std::vector<int64_t> counts_bytes;
  std::vector<int64_t> offsets_bytes;
};

// Abstract communicator. Thread safety: a communicator is used by one thread at a time for its
// collectives (calls on one rank are sequential, in the same order on every rank); Abort() may be
// called from any thread at any time, including while another thread is inside a collective.
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual MemorySpace memory_space() const { return MemorySpace::kHost; }
  // Short name for logs and errors, e.g. "gloo", "loopback", "nccl".
  virtual std::string name() const = 0;

  // Every rank sends send.counts_bytes[p] bytes at send.offsets_bytes[p] to rank p and receives
  // recv.counts_bytes[p] bytes at recv.offsets_bytes[p] from rank p (the self entry is a local
  // copy). The counts are known to both sides: recv.counts_bytes[p] on this rank must equal
  // send.counts_bytes[rank()] on rank p. Use ExchangeCounts() first when they are not.
  // Blocks until this rank's receive buffer is complete and its send buffer may be reused.
  virtual absl::Status AllToAllV(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) = 0;

  // Gathers num_bytes from every rank: recv_buffer[p * num_bytes, (p + 1) * num_bytes) receives
  // rank p's send_buffer. recv_buffer holds world_size() * num_bytes bytes.
  virtual absl::Status AllGather(const void* send_buffer, int64_t num_bytes, void* recv_buffer) = 0;

  virtual absl::Status Barrier() = 0;

  // Makes pending and future calls on this rank fail fast with ABORTED, and tells the other ranks
  // of the group as far as the transport allows (loopback: the group is aborted; Gloo: every
  // connection is reset, so the peers' calls fail at once; NCCL: ncclCommAbort, and the peers'
  // watchdogs see the error or their timeout). Idempotent. Returns promptly (NCCL: may first wait
  // for an enqueue in progress on another thread, bounded by the timeout).
  virtual void Abort(const std::string& reason) = 0;

  // AllToAllV over HOST buffers whatever memory_space() is (small metadata such as counts): host
  // communicators run AllToAllV; device communicators override it and stage through device
  // memory (UNIMPLEMENTED by default for them).
  virtual absl::Status AllToAllVHost(const AllToAllVBuffer& send, const AllToAllVBuffer& recv);

  // Exchanges one int64 per peer: send_counts[p] goes to rank p, which finds it in its
  // recv_counts[rank()]. Both have world_size() entries (host memory); recv_counts is resized.
  absl::Status ExchangeCounts(const std::vector<int64_t>& send_counts,
                              std::vector<int64_t>* recv_counts);
};

// Fills offsets_bytes as the exclusive prefix sum of counts_bytes (the packed layout) and returns
// the total byte count.
int64_t PackOffsets(AllToAllVBuffer* buffer);

// Checks one side of an all-to-all-v against the group size: world_size entries, counts >= 0,
// offsets >= 0, data non-null when any count is positive. `side` names it in the message.
absl::Status ValidateAllToAllVBuffer(const AllToAllVBuffer& buffer, int world_size,
                                     const char* side);

// True for the codes a broken peer produces (DEADLINE_EXCEEDED, UNAVAILABLE, ABORTED).
bool IsPeerFailure(const absl::Status& status);

}  // namespace switchyard
