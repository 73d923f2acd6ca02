#include "worker/comm/faulty_communicator.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace switchyard {

FaultyCommunicator::FaultyCommunicator(std::unique_ptr<Communicator> inner,
                                       const CommunicatorOptions& options)
    : inner_(std::move(inner)), options_(options) {}

void FaultyCommunicator::InjectAt(int64_t call_idx, const Fault& fault) {
  absl::MutexLock lock(&mu_);
  faults_[call_idx] = fault;
}

void FaultyCommunicator::KillAfter(int64_t num_calls, std::function<void()> on_kill) {
  absl::MutexLock lock(&mu_);
  kill_at_call_ = num_calls;
  on_kill_ = std::move(on_kill);
}

int64_t FaultyCommunicator::num_calls() const {
  absl::MutexLock lock(&mu_);
  return num_calls_;
}

absl::Status FaultyCommunicator::Intercept(const char* op_name,
                                           const std::function<absl::Status()>& call) {
  std::optional<Fault> fault;
  std::function<void()> on_kill;
  bool dead = false;
  int64_t call_idx = 0;
  {
    absl::MutexLock lock(&mu_);
    call_idx = num_calls_++;
    if (kill_at_call_ >= 0 && call_idx >= kill_at_call_) {
      dead = true;
      on_kill = std::move(on_kill_);
      on_kill_ = nullptr;
    } else if (auto it = faults_.find(call_idx); it != faults_.end()) {
      fault = it->second;
    }
  }
  const std::string where = absl::StrCat("rank ", rank(), " ", op_name, " (call ", call_idx, ")");
  if (dead) {
    if (on_kill) on_kill();
    return absl::UnavailableError(absl::StrCat(where, ": rank killed by fault injection"));
  }
  if (!fault.has_value()) return call();
  switch (fault->kind) {
    case Fault::Kind::kDrop:
      absl::SleepFor(options_.timeout);
      return absl::DeadlineExceededError(absl::StrCat(where, ": call dropped by fault injection"));
    case Fault::Kind::kDelay:
      absl::SleepFor(fault->delay);
      return call();
    case Fault::Kind::kFail:
      break;
  }
  return absl::Status(fault->status.code(),
                      absl::StrCat(where, ": injected: ", fault->status.message()));
}

absl::Status FaultyCommunicator::AllToAllV(const AllToAllVBuffer& send,
                                           const AllToAllVBuffer& recv) {
  return Intercept("all-to-all-v", [&] { return inner_->AllToAllV(send, recv); });
}

absl::Status FaultyCommunicator::AllToAllVHost(const AllToAllVBuffer& send,
                                               const AllToAllVBuffer& recv) {
  return Intercept("all-to-all-v", [&] { return inner_->AllToAllVHost(send, recv); });
}

absl::Status FaultyCommunicator::AllGather(const void* send_buffer, int64_t num_bytes,
                                           void* recv_buffer) {
  return Intercept("all-gather",
                   [&] { return inner_->AllGather(send_buffer, num_bytes, recv_buffer); });
}

absl::Status FaultyCommunicator::Barrier() {
  return Intercept("barrier", [&] { return inner_->Barrier(); });
}

}  // namespace switchyard
