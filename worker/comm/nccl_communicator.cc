#include "worker/comm/nccl_communicator.h"

#include <algorithm>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "gloo/rendezvous/store.h"

namespace switchyard {
namespace {

std::string NcclError(ncclResult_t result) {
  return absl::StrCat(ncclGetErrorString(result), " (", ncclGetLastError(nullptr), ")");
}

// CUDA failures here mean the device is unusable for us: UNAVAILABLE, naming the call.
absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("nccl communicator: ", what, ": ", cudaGetErrorString(error)));
}

// Waits until a non-blocking communicator leaves ncclInProgress, up to `deadline`.
absl::Status WaitReady(ncclComm_t comm, absl::Time deadline, const std::string& where) {
  while (true) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t result = ncclCommGetAsyncError(comm, &state);
    if (result != ncclSuccess) state = result;
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) {
      return absl::UnavailableError(absl::StrCat(where, ": ", NcclError(state)));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(where, ": still in progress at the deadline"));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

// One rank of an NCCL group. Collectives from one thread at a time; Abort from any thread.
class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int world_size, int device, cudaStream_t stream,
                   bool owns_stream, const NcclCommunicatorOptions& options)
      : comm_(comm),
        rank_(rank),
        world_size_(world_size),
        device_(device),
        stream_(stream),
        owns_stream_(owns_stream),
        options_(options) {}

  ~NcclCommunicator() override;

  absl::Status Start();

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  MemorySpace memory_space() const override { return MemorySpace::kDevice; }
  std::string name() const override { return "nccl"; }

  absl::Status AllToAllV(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) override;
  absl::Status AllGather(const void* send_buffer, int64_t num_bytes, void* recv_buffer) override;
  absl::Status Barrier() override;
  void Abort(const std::string& reason) override;
  absl::Status AllToAllVHost(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) override;

 private:
  std::string Where(const char* op_name) const {
    return absl::StrCat("nccl rank ", rank_, "/", world_size_, " ", op_name);
  }
  // Enqueues `enqueue` (NCCL calls inside a group) under the lock, then waits for the stream.
  template <typename Enqueue>
  absl::Status Run(const char* op_name, Enqueue enqueue);
  absl::Status WaitForStream(const char* op_name, absl::Time deadline);
  void AbortLocked(const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WatchdogLoop();

  absl::Mutex mu_;
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_);
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  std::string abort_reason_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // When the operation in flight was enqueued; InfiniteFuture when none.
  absl::Time inflight_since_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  std::atomic<bool> aborted_flag_{false};

  const int rank_;
  const int world_size_;
  const int device_;
  cudaStream_t stream_;
  const bool owns_stream_;
  const NcclCommunicatorOptions options_;
  cudaEvent_t done_event_ = nullptr;
  void* scratch_ = nullptr;  // the barrier word
  // Device staging of AllToAllVHost (send bytes, then receive bytes); grows, never shrinks.
  void* host_stage_ = nullptr;
  int64_t host_stage_bytes_ = 0;
  std::thread watchdog_;
};

absl::Status NcclCommunicator::Start() {
  SY_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
  SY_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&done_event_, cudaEventDisableTiming),
                                "cudaEventCreate"));
  SY_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&scratch_, 8 * sizeof(int64_t)),
                                "cudaMalloc scratch"));
  watchdog_ = std::thread([this] { WatchdogLoop(); });
  return absl::OkStatus();
}

NcclCommunicator::~NcclCommunicator() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (watchdog_.joinable()) watchdog_.join();
  absl::MutexLock lock(&mu_);
  if (comm_ != nullptr) {
    // Finalize + destroy only when healthy; a broken group is aborted (destroy can hang).
    bool clean = !aborted_;
    if (clean) {
      const ncclResult_t finalized = ncclCommFinalize(comm_);
      clean = (finalized == ncclSuccess || finalized == ncclInProgress) &&
              WaitReady(comm_, absl::Now() + options_.comm.timeout, "finalize").ok();
    }
    if (clean) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
    comm_ = nullptr;
  }
  cudaSetDevice(device_);
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (host_stage_ != nullptr) cudaFree(host_stage_);
  if (done_event_ != nullptr) cudaEventDestroy(done_event_);
  if (owns_stream_ && stream_ != nullptr) cudaStreamDestroy(stream_);
}

void NcclCommunicator::AbortLocked(const std::string& reason) {
  if (aborted_) return;
  aborted_ = true;
  aborted_flag_.store(true);
  abort_reason_ = reason;
  if (comm_ != nullptr) {
    ncclCommAbort(comm_);  // frees the communicator; never destroy after this
    comm_ = nullptr;
  }
}

void NcclCommunicator::Abort(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  AbortLocked(absl::StrCat("Abort() on rank ", rank_, ": ", reason));
}

void NcclCommunicator::WatchdogLoop() {
  cudaSetDevice(device_);
  while (true) {
    absl::SleepFor(options_.watchdog_interval);
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    if (aborted_ || comm_ == nullptr) continue;
    ncclResult_t state = ncclSuccess;
    ncclResult_t result = ncclCommGetAsyncError(comm_, &state);
    if (result != ncclSuccess) state = result;
    if (state != ncclSuccess && state != ncclInProgress) {
      AbortLocked(
          absl::StrCat("watchdog on rank ", rank_, ": asynchronous error ", NcclError(state)));
    } else if (absl::Now() - inflight_since_ > options_.comm.timeout) {
      AbortLocked(absl::StrCat("watchdog on rank ", rank_, ": operation in flight for more than ",
                               absl::FormatDuration(options_.comm.timeout)));
    }
  }
}

absl::Status NcclCommunicator::WaitForStream(const char* op_name, absl::Time deadline) {
  while (true) {
    const cudaError_t state = cudaEventQuery(done_event_);
    if (state == cudaSuccess) return absl::OkStatus();
    if (state != cudaErrorNotReady) return CudaStatus(state, op_name);
    if (aborted_flag_.load()) {
      absl::MutexLock lock(&mu_);
      return absl::AbortedError(absl::StrCat(Where(op_name), ": ", abort_reason_));
    }
    if (absl::Now() > deadline) {
      absl::MutexLock lock(&mu_);
      AbortLocked(absl::StrCat(Where(op_name), ": timed out after ",
                               absl::FormatDuration(options_.comm.timeout)));
      return absl::DeadlineExceededError(abort_reason_);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

template <typename Enqueue>
absl::Status NcclCommunicator::Run(const char* op_name, Enqueue enqueue) {
  const absl::Time deadline = absl::Now() + options_.comm.timeout;
  {
    absl::MutexLock lock(&mu_);
    if (aborted_) {
      return absl::AbortedError(
          absl::StrCat(Where(op_name), ": communicator is aborted: ", abort_reason_));
    }
    ncclGroupStart();
    ncclResult_t enqueued = enqueue(comm_);
    ncclResult_t ended = ncclGroupEnd();
    if (enqueued == ncclSuccess) enqueued = ended;
    absl::Status status;
    if (enqueued == ncclInProgress) {
      status = WaitReady(comm_, deadline, Where(op_name));
    } else if (enqueued != ncclSuccess) {
      status = absl::UnavailableError(absl::StrCat(Where(op_name), ": ", NcclError(enqueued)));
    }
    if (status.ok()) status = CudaStatus(cudaEventRecord(done_event_, stream_), op_name);
    if (!status.ok()) {
      AbortLocked(status.ToString());
      return status;
    }
    inflight_since_ = absl::Now();
  }
  absl::Status status = WaitForStream(op_name, deadline);
  absl::MutexLock lock(&mu_);
  inflight_since_ = absl::InfiniteFuture();
  if (!status.ok()) AbortLocked(status.ToString());
  return status;
}

absl::Status NcclCommunicator::AllToAllV(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) {
  absl::Status valid = ValidateAllToAllVBuffer(send, world_size_, "send");
  if (valid.ok()) valid = ValidateAllToAllVBuffer(recv, world_size_, "recv");
  if (valid.ok() && send.counts_bytes[rank_] != recv.counts_bytes[rank_]) {
    valid = absl::InvalidArgumentError(absl::StrCat(Where("all-to-all-v"), ": self region sizes ",
                                                    send.counts_bytes[rank_], " and ",
                                                    recv.counts_bytes[rank_], " differ"));
  }
  if (!valid.ok()) {
    Abort(valid.ToString());
    return valid;
  }
  return Run("all-to-all-v", [&](ncclComm_t comm) -> ncclResult_t {
    const char* send_bytes = static_cast<const char*>(send.data);
    char* recv_bytes = static_cast<char*>(recv.data);
    if (recv.counts_bytes[rank_] > 0) {
      cudaMemcpyAsync(recv_bytes + recv.offsets_bytes[rank_],
                      send_bytes + send.offsets_bytes[rank_], recv.counts_bytes[rank_],
                      cudaMemcpyDeviceToDevice, stream_);
    }
    for (int peer = 0; peer < world_size_; ++peer) {
      if (peer == rank_) continue;
      if (send.counts_bytes[peer] > 0) {
        ncclResult_t result = ncclSend(send_bytes + send.offsets_bytes[peer],
                                       send.counts_bytes[peer], ncclInt8, peer, comm, stream_);
        if (result != ncclSuccess && result != ncclInProgress) return result;
      }
      if (recv.counts_bytes[peer] > 0) {
        ncclResult_t result = ncclRecv(recv_bytes + recv.offsets_bytes[peer],
                                       recv.counts_bytes[peer], ncclInt8, peer, comm, stream_);
        if (result != ncclSuccess && result != ncclInProgress) return result;
      }
    }
    return ncclSuccess;
  });
}

absl::Status NcclCommunicator::AllGather(const void* send_buffer, int64_t num_bytes,
                                         void* recv_buffer) {
  if (num_bytes < 0 || (num_bytes > 0 && (send_buffer == nullptr || recv_buffer == nullptr))) {
    absl::Status status = absl::InvalidArgumentError(
        absl::StrCat(Where("all-gather"), ": bad buffers or size ", num_bytes));
    Abort(status.ToString());
    return status;
  }
  if (num_bytes == 0) return Barrier();
  return Run("all-gather", [&](ncclComm_t comm) {
    return ncclAllGather(send_buffer, recv_buffer, num_bytes, ncclInt8, comm, stream_);
  });
}

absl::Status NcclCommunicator::Barrier() {
  return Run("barrier", [&](ncclComm_t comm) {
    return ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm, stream_);
  });
}

absl::Status NcclCommunicator::AllToAllVHost(const AllToAllVBuffer& send,
                                             const AllToAllVBuffer& recv) {
  absl::Status valid = ValidateAllToAllVBuffer(send, world_size_, "send");
  if (valid.ok()) valid = ValidateAllToAllVBuffer(recv, world_size_, "recv");
  if (!valid.ok()) {
    Abort(valid.ToString());
    return valid;
  }
  // The extent of each side: its regions may be in any order.
  int64_t send_bytes = 0, recv_bytes = 0;
  for (int peer = 0; peer < world_size_; ++peer) {
    send_bytes = std::max(send_bytes, send.offsets_bytes[peer] + send.counts_bytes[peer]);
    recv_bytes = std::max(recv_bytes, recv.offsets_bytes[peer] + recv.counts_bytes[peer]);
  }
  // Fail-stop (communicator.h): a local failure here leaves the peers inside the collective.
  auto fail = [this](absl::Status status) {
    Abort(status.ToString());
    return status;
  };
  if (send_bytes + recv_bytes > host_stage_bytes_) {
    if (host_stage_ != nullptr) cudaFree(host_stage_);
    host_stage_ = nullptr;
    host_stage_bytes_ = 0;
    const int64_t capacity = std::max<int64_t>((send_bytes + recv_bytes) * 3 / 2, 4096);
    absl::Status allocated =
        CudaStatus(cudaMalloc(&host_stage_, capacity), "cudaMalloc host staging");
    if (!allocated.ok()) return fail(std::move(allocated));
    host_stage_bytes_ = capacity;
  }
  char* device_send = static_cast<char*>(host_stage_);
  char* device_recv = device_send + send_bytes;
  if (send_bytes > 0) {
    absl::Status copied = CudaStatus(
        cudaMemcpyAsync(device_send, send.data, send_bytes, cudaMemcpyHostToDevice, stream_),
        "copy host all-to-all-v to device");
    if (!copied.ok()) return fail(std::move(copied));
  }
  AllToAllVBuffer device_send_desc = send, device_recv_desc = recv;
  device_send_desc.data = device_send;
  device_recv_desc.data = device_recv;
  SY_RETURN_IF_ERROR(AllToAllV(device_send_desc, device_recv_desc));  // aborts on its own errors
  if (recv_bytes == 0) return absl::OkStatus();
  absl::Status copied = CudaStatus(
      cudaMemcpyAsync(recv.data, device_recv, recv_bytes, cudaMemcpyDeviceToHost, stream_),
      "copy host all-to-all-v to host");
  if (copied.ok()) {
    copied = CudaStatus(cudaStreamSynchronize(stream_), "synchronize host all-to-all-v");
  }
  if (!copied.ok()) return fail(std::move(copied));
  return absl::OkStatus();
}

absl::StatusOr<ncclUniqueId> RendezvousUniqueId(gloo::rendezvous::Store& store, int rank,
                                                const NcclCommunicatorOptions& options) {
  const std::string key = options.store_prefix + "/unique_id";
  ncclUniqueId id;
  try {
    if (rank == 0) {
      ncclResult_t result = ncclGetUniqueId(&id);
      if (result != ncclSuccess) {
        return absl::UnavailableError(absl::StrCat("ncclGetUniqueId: ", NcclError(result)));
      }
      store.set(key, std::vector<char>(id.internal, id.internal + sizeof(id.internal)));
      return id;
    }
    store.wait({key},
               std::chrono::milliseconds(absl::ToInt64Milliseconds(options.comm.connect_timeout)));
    const std::vector<char> bytes = store.get(key);
    if (bytes.size() != sizeof(id.internal)) {
      return absl::InternalError(absl::StrCat("nccl unique id under '", key, "' has ", bytes.size(),
                                              " bytes, expected ", sizeof(id.internal)));
    }
    std::memcpy(id.internal, bytes.data(), bytes.size());
    return id;
  } catch (const std::exception& e) {
    return absl::DeadlineExceededError(
        absl::StrCat("nccl rank ", rank, ": unique id rendezvous under '", key, "': ", e.what()));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    std::shared_ptr<gloo::rendezvous::Store> store, int rank, int world_size,
    const NcclCommunicatorOptions& options, cudaStream_t stream) {
  if (store == nullptr) return absl::InvalidArgumentError("nccl: null rendezvous store");
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl: rank ", rank, " outside a group of ", world_size));
  }
  int device = options.device;
  if (device < 0) SY_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  SY_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  SY_ASSIGN_OR_RETURN(ncclUniqueId id, RendezvousUniqueId(*store, rank, options));
  const bool owns_stream = stream == nullptr;
  if (owns_stream) {
    SY_RETURN_IF_ERROR(
        CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const std::string where = absl::StrCat("nccl rank ", rank, "/", world_size, " init");
  ncclResult_t result = ncclCommInitRankConfig(&comm, world_size, id, rank, &config);
  absl::Status status;
  if (result == ncclInProgress || (result == ncclSuccess && comm != nullptr)) {
    status = WaitReady(comm, absl::Now() + options.comm.connect_timeout, where);
  } else {
    status = absl::UnavailableError(absl::StrCat(where, ": ", NcclError(result)));
  }
  if (!status.ok()) {
    if (comm != nullptr) ncclCommAbort(comm);
    if (owns_stream) cudaStreamDestroy(stream);
    return status;
  }
  auto communicator = std::make_unique<NcclCommunicator>(comm, rank, world_size, device, stream,
                                                         owns_stream, options);
  SY_RETURN_IF_ERROR(communicator->Start());
  return std::unique_ptr<Communicator>(std::move(communicator));
}

}  // namespace switchyard
