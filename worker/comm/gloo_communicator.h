// Gloo communicator: the CPU data plane between worker processes, over TCP.
//
// Ranks rendezvous through a gloo::rendezvous::Store (Debian's Gloo has no TCP store: tests use a
// FileStore in a temporary directory; the coordinator will serve a store over gRPC), then connect a
// full mesh of TCP pairs. All-to-all-v is built on Gloo's unbound buffers (the same transport calls
// gloo::alltoallv makes) so that arbitrary per-peer offsets need no staging copy, a timeout can
// name the peers that did not deliver, and Abort() can wake a pending wait. All-gather and barrier
// are gloo::allgather and gloo::barrier. Every Gloo exception is caught at the call and becomes an
// absl::Status naming the operation (and the peers, where known); after any error the
// communicator hard-closes its connections so that every peer fails promptly too.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/comm/communicator.h"

namespace gloo::rendezvous {
class Store;
}  // namespace gloo::rendezvous

namespace switchyard {

struct GlooCommunicatorOptions {
  CommunicatorOptions comm;
  // Address this rank listens on and advertises to its peers (a hostname or an IP).
  std::string hostname = "127.0.0.1";
  // Prepended to every store key, so that several groups (or generations of one group after a
  // failure) can share one store. Must be the same on every rank of a group and new per group.
  std::string store_prefix = "switchyard/dataplane";
};

// Joins the group of `world_size` ranks as `rank`: rendezvous through `store`, then connect to
// every peer, all within options.comm.connect_timeout. Sets SIGPIPE to ignored for the process
// (a dead peer must become an error, not kill us). Returns DEADLINE_EXCEEDED when a peer never
// shows up, UNAVAILABLE when the transport fails, INVALID_ARGUMENT for bad arguments.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    std::shared_ptr<gloo::rendezvous::Store> store, int rank, int world_size,
    const GlooCommunicatorOptions& options = {});

}  // namespace switchyard
