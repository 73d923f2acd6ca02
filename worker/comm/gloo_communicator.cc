#include "worker/comm/gloo_communicator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <exception>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "gloo/allgather.h"
#include "gloo/barrier.h"
#include "gloo/common/error.h"
#include "gloo/common/logging.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/prefix_store.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "gloo/types.h"

namespace switchyard {
namespace {

// Our all-to-all-v slots: a prefix Gloo's own collectives do not use (they use 0x01..0x08).
constexpr uint8_t kAllToAllVSlotPrefix = 0x53;

std::chrono::milliseconds ToMillis(absl::Duration duration) {
  return std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(duration)));
}

// Gloo's stores wait with their own default timeout (30 s) when no timeout is given, and
// connectFullMesh passes none; this adapter imposes ours on every wait and get.
class TimeoutStore final : public gloo::rendezvous::Store {
 public:
  TimeoutStore(gloo::rendezvous::Store& inner, std::chrono::milliseconds timeout)
      : inner_(inner), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    inner_.set(key, data);
  }
  std::vector<char> get(const std::string& key) override {
    inner_.wait({key}, timeout_);
    return inner_.get(key);
  }
  void wait(const std::vector<std::string>& keys) override { inner_.wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    inner_.wait(keys, std::min(timeout, timeout_));
  }

 private:
  gloo::rendezvous::Store& inner_;
  const std::chrono::milliseconds timeout_;
};

// Gloo reports timeouts only in its messages ("Timed out waiting ...", "Wait timeout ...").
absl::StatusCode ClassifyGlooError(const std::string& message, bool is_io_error) {
  if (absl::StrContains(message, "imed out") || absl::StrContains(message, "imeout")) {
    return absl::StatusCode::kDeadlineExceeded;
  }
  return is_io_error ? absl::StatusCode::kUnavailable : absl::StatusCode::kInternal;
}

// Runs `fn`, turning any exception into a status "<where>: <message>".
template <typename Fn>
absl::Status CatchGloo(const std::string& where, Fn fn) {
  try {
    return fn();
  } catch (const gloo::IoException& e) {
    return absl::Status(ClassifyGlooError(e.what(), true), absl::StrCat(where, ": ", e.what()));
  } catch (const gloo::EnforceNotMet& e) {
    return absl::Status(ClassifyGlooError(e.what(), false), absl::StrCat(where, ": ", e.what()));
  } catch (const std::exception& e) {
    return absl::Status(ClassifyGlooError(e.what(), true), absl::StrCat(where, ": ", e.what()));
  }
}

// One rank of a Gloo group. Collectives from one thread at a time; Abort from any thread.
class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::transport::Device> device,
                   std::shared_ptr<gloo::rendezvous::Context> context,
                   const CommunicatorOptions& options)
      : device_(std::move(device)), context_(std::move(context)), options_(options) {}

  ~GlooCommunicator() override {
    // Hard-close first: a soft close could wait on a peer that is gone.
    if (broken_.load()) CloseConnections();
  }

  int rank() const override { return context_->rank; }
  int world_size() const override { return context_->size; }
  std::string name() const override { return "gloo"; }

  absl::Status AllToAllV(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) override;
  absl::Status AllGather(const void* send_buffer, int64_t num_bytes, void* recv_buffer) override;
  absl::Status Barrier() override;
  void Abort(const std::string& reason) override;

 private:
  std::string Where(const char* op_name) const {
    return absl::StrCat("gloo rank ", rank(), "/", world_size(), " ", op_name);
  }
  absl::Status CheckUsable(const char* op_name);
  // Marks the communicator broken and hard-closes every connection so the peers fail promptly.
  absl::Status Fail(absl::Status status);
  void CloseConnections();
  using UnboundPtr = std::unique_ptr<gloo::transport::UnboundBuffer>;
  absl::Status ExchangeUnbound(const AllToAllVBuffer& send, const AllToAllVBuffer& recv);
  absl::Status WaitAll(bool for_recv, const std::vector<int>& peers,
                       std::vector<UnboundPtr>& buffers, absl::Time deadline);
  absl::Status WaitOne(bool for_recv, gloo::transport::UnboundBuffer* buffer, absl::Time deadline);

  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::rendezvous::Context> context_;
  const CommunicatorOptions options_;
  uint32_t next_tag_ = 0;
  std::atomic<bool> broken_{false};
  absl::Mutex mu_;
  std::string abort_reason_ ABSL_GUARDED_BY(mu_);
  // The unbound buffers of the all-to-all-v in flight, so that Abort can wake its waits.
  std::vector<UnboundPtr>* inflight_send_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<UnboundPtr>* inflight_recv_ ABSL_GUARDED_BY(mu_) = nullptr;
};

absl::Status GlooCommunicator::CheckUsable(const char* op_name) {
  if (!broken_.load()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  return absl::AbortedError(
      absl::StrCat(Where(op_name), ": communicator is aborted: ", abort_reason_));
}

absl::Status GlooCommunicator::Fail(absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    if (abort_reason_.empty()) abort_reason_ = status.ToString();
  }
  if (!broken_.exchange(true)) CloseConnections();
  return status;
}

void GlooCommunicator::CloseConnections() {
  // closeConnections() resets every TCP pair (SO_LINGER 0), which the peers see at once.
  try {
    context_->closeConnections();
  } catch (const std::exception&) {
    // Already closing or never connected: nothing more to release here.
  }
}

void GlooCommunicator::Abort(const std::string& reason) {
  {
    absl::MutexLock lock(&mu_);
    if (abort_reason_.empty())
      abort_reason_ = absl::StrCat("Abort() on rank ", rank(), ": ", reason);
    if (inflight_send_ != nullptr) {
      for (auto& buffer : *inflight_send_) buffer->abortWaitSend();
    }
    if (inflight_recv_ != nullptr) {
      for (auto& buffer : *inflight_recv_) buffer->abortWaitRecv();
    }
  }
  if (!broken_.exchange(true)) CloseConnections();
}

absl::Status GlooCommunicator::WaitAll(bool for_recv, const std::vector<int>& peers,
                                       std::vector<UnboundPtr>& buffers, absl::Time deadline) {
  for (size_t i = 0; i < peers.size(); ++i) {
    absl::Status status = WaitOne(for_recv, buffers[i].get(), deadline);
    if (status.ok()) continue;
    // Name every peer still missing: probe the rest briefly (their data may have arrived).
    std::vector<int> missing = {peers[i]};
    for (size_t j = i + 1; j < peers.size(); ++j) {
      if (!WaitOne(for_recv, buffers[j].get(), absl::Now()).ok()) missing.push_back(peers[j]);
    }
    return absl::Status(status.code(), absl::StrCat(status.message(), " (",
                                                    for_recv ? "receiving from" : "sending to",
                                                    " rank(s) ", absl::StrJoin(missing, ","), ")"));
  }
  return absl::OkStatus();
}

absl::Status GlooCommunicator::WaitOne(bool for_recv, gloo::transport::UnboundBuffer* buffer,
                                       absl::Time deadline) {
  return CatchGloo(Where("all-to-all-v"), [&]() -> absl::Status {
    const auto timeout = ToMillis(deadline - absl::Now());
    const bool done = for_recv ? buffer->waitRecv(timeout) : buffer->waitSend(timeout);
    if (!done) return absl::AbortedError("aborted while waiting");
    return absl::OkStatus();
  });
}

// One unbound buffer per peer region: Gloo reports only the latest completing peer of a shared
// buffer, so per-peer buffers are what lets a timeout name the peers that did not deliver.
absl::Status GlooCommunicator::ExchangeUnbound(const AllToAllVBuffer& send,
                                               const AllToAllVBuffer& recv) {
  const uint64_t slot = gloo::Slot::build(kAllToAllVSlotPrefix, next_tag_++);
  const absl::Time deadline = absl::Now() + options_.timeout;
  std::vector<int> recv_peers, send_peers;
  std::vector<UnboundPtr> recv_buffers, send_buffers;
  absl::Status status = CatchGloo(Where("all-to-all-v"), [&]() -> absl::Status {
    for (int i = 1; i < world_size(); ++i) {
      // Ring order, as Gloo's own alltoallv: spread the first messages over different peers.
      const int to = (rank() + i) % world_size();
      const int from = (rank() - i + world_size()) % world_size();
      if (recv.counts_bytes[from] > 0) {
        recv_buffers.push_back(context_->createUnboundBuffer(
            static_cast<char*>(recv.data) + recv.offsets_bytes[from], recv.counts_bytes[from]));
        recv_buffers.back()->recv(from, slot, 0, recv.counts_bytes[from]);
        recv_peers.push_back(from);
      }
      if (send.counts_bytes[to] > 0) {
        send_buffers.push_back(context_->createUnboundBuffer(
            static_cast<char*>(send.data) + send.offsets_bytes[to], send.counts_bytes[to]));
        send_buffers.back()->send(to, slot, 0, send.counts_bytes[to]);
        send_peers.push_back(to);
      }
    }
    return absl::OkStatus();
  });
  {
    absl::MutexLock lock(&mu_);
    inflight_send_ = &send_buffers;
    inflight_recv_ = &recv_buffers;
  }
  if (status.ok() && recv.counts_bytes[rank()] > 0) {
    std::memcpy(static_cast<char*>(recv.data) + recv.offsets_bytes[rank()],
                static_cast<const char*>(send.data) + send.offsets_bytes[rank()],
                recv.counts_bytes[rank()]);
  }
  if (status.ok()) status = WaitAll(/*for_recv=*/true, recv_peers, recv_buffers, deadline);
  if (status.ok()) status = WaitAll(/*for_recv=*/false, send_peers, send_buffers, deadline);
  absl::MutexLock lock(&mu_);
  inflight_send_ = nullptr;
  inflight_recv_ = nullptr;
  return status;
}

absl::Status GlooCommunicator::AllToAllV(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) {
  SY_RETURN_IF_ERROR(CheckUsable("all-to-all-v"));
  absl::Status status = ValidateAllToAllVBuffer(send, world_size(), "send");
  if (status.ok()) status = ValidateAllToAllVBuffer(recv, world_size(), "recv");
  if (status.ok() && send.counts_bytes[rank()] != recv.counts_bytes[rank()]) {
    status = absl::InvalidArgumentError(
        absl::StrCat(Where("all-to-all-v"), ": sends ", send.counts_bytes[rank()],
                     " bytes to itself but expects ", recv.counts_bytes[rank()]));
  }
  if (status.ok()) status = ExchangeUnbound(send, recv);
  if (!status.ok()) return Fail(status);
  return CheckUsable("all-to-all-v");
}

absl::Status GlooCommunicator::AllGather(const void* send_buffer, int64_t num_bytes,
                                         void* recv_buffer) {
  SY_RETURN_IF_ERROR(CheckUsable("all-gather"));
  if (num_bytes <= 0 || send_buffer == nullptr || recv_buffer == nullptr) {
    if (num_bytes == 0) return Barrier();  // nothing to move, but keep the ranks in step
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        Where("all-gather"), ": needs non-null buffers and a positive size, got ", num_bytes)));
  }
  absl::Status status = CatchGloo(Where("all-gather"), [&]() -> absl::Status {
    gloo::AllgatherOptions opts(context_);
    opts.setInput(static_cast<uint8_t*>(const_cast<void*>(send_buffer)), num_bytes);
    opts.setOutput(static_cast<uint8_t*>(recv_buffer), num_bytes * world_size());
    opts.setTimeout(ToMillis(options_.timeout));
    gloo::allgather(opts);
    return absl::OkStatus();
  });
  if (!status.ok()) return Fail(status);
  return CheckUsable("all-gather");
}

absl::Status GlooCommunicator::Barrier() {
  SY_RETURN_IF_ERROR(CheckUsable("barrier"));
  absl::Status status = CatchGloo(Where("barrier"), [&]() -> absl::Status {
    gloo::BarrierOptions opts(context_);
    opts.setTimeout(ToMillis(options_.timeout));
    gloo::barrier(opts);
    return absl::OkStatus();
  });
  if (!status.ok()) return Fail(status);
  return CheckUsable("barrier");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    std::shared_ptr<gloo::rendezvous::Store> store, int rank, int world_size,
    const GlooCommunicatorOptions& options) {
  if (store == nullptr) return absl::InvalidArgumentError("gloo: null rendezvous store");
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("gloo: rank ", rank, " outside a group of ", world_size));
  }
  // A peer that dies mid-write would otherwise kill this process with SIGPIPE from inside Gloo's
  // socket writes; ignored, the write fails with EPIPE and becomes an UNAVAILABLE status.
  std::signal(SIGPIPE, SIG_IGN);
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> context;
  const std::string where =
      absl::StrCat("gloo rank ", rank, "/", world_size, " connect via ", options.hostname,
                   " (store prefix '", options.store_prefix, "')");
  SY_RETURN_IF_ERROR(CatchGloo(where, [&]() -> absl::Status {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    device = gloo::transport::tcp::CreateDevice(attr);
    context = std::make_shared<gloo::rendezvous::Context>(rank, world_size);
    context->setTimeout(ToMillis(options.comm.connect_timeout));
    gloo::rendezvous::PrefixStore prefixed(options.store_prefix, *store);
    TimeoutStore bounded(prefixed, ToMillis(options.comm.connect_timeout));
    context->connectFullMesh(bounded, device);
    // A rank can finish connecting before its peers have; without this barrier a rank that then
    // exits early (nothing to do) breaks a slower peer's half-made connection.
    gloo::BarrierOptions barrier(context);
    barrier.setTimeout(ToMillis(options.comm.connect_timeout));
    gloo::barrier(barrier);
    context->setTimeout(ToMillis(options.comm.timeout));
    return absl::OkStatus();
  }));
  return std::unique_ptr<Communicator>(
      new GlooCommunicator(std::move(device), std::move(context), options.comm));
}

}  // namespace switchyard
