// NCCL communicator: the GPU data plane (built only with SWITCHYARD_WITH_NCCL).
//
// Buffers are device memory (memory_space() == kDevice). Collectives are enqueued on the
// communicator's CUDA stream: all-to-all-v as grouped ncclSend/ncclRecv (the self region is a
// device-to-device copy), all-gather as ncclAllGather, the barrier as a one-element all-reduce.
// Each call then waits for its work to finish, polling the stream and ncclCommGetAsyncError,
// bounded by CommunicatorOptions::timeout; a later version will return right after enqueueing so
// that the engine can overlap (the watchdog below already covers work the caller does not wait
// for).
//
// Failure handling (notes/reliability.md §1): the communicator is non-blocking
// (ncclConfig_t.blocking = 0, ncclCommInitRankConfig), so no NCCL call can hang the caller. A
// watchdog thread polls ncclCommGetAsyncError and calls ncclCommAbort on an asynchronous error
// or when an operation has been in flight longer than the timeout; aborting is never followed by
// ncclCommDestroy (which can hang on a dead peer). After an abort every call fails with ABORTED.
// The ncclUniqueId is exchanged through the same rendezvous Store interface as Gloo's: rank 0
// creates and sets it, the others wait for it.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"

namespace gloo::rendezvous {
class Store;
}  // namespace gloo::rendezvous

namespace switchyard {

struct NcclCommunicatorOptions {
  CommunicatorOptions comm;
  // CUDA device ordinal this rank uses; -1 keeps the calling thread's current device.
  int device = -1;
  // Prefix of the store key holding the unique id; new for every group (generation).
  std::string store_prefix = "switchyard/nccl";
  // How often the watchdog polls for asynchronous errors and overdue operations.
  absl::Duration watchdog_interval = absl::Milliseconds(10);
};

// Joins the group as `rank`. `stream` is where collectives run (null: the communicator creates and
// owns a non-blocking stream). UNAVAILABLE when CUDA or NCCL fail (e.g. no GPU), DEADLINE_EXCEEDED
// when the rendezvous or the communicator setup exceeds options.comm.connect_timeout.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    std::shared_ptr<gloo::rendezvous::Store> store, int rank, int world_size,
    const NcclCommunicatorOptions& options = {}, cudaStream_t stream = nullptr);

}  // namespace switchyard
