// Fault-injecting communicator wrapper for tests (in the manner of LevelDB's fault-injection env).
//
// Wraps any Communicator and, on chosen calls, drops the call (this rank never arrives), delays it,
// fails it, or "kills" this rank after N calls. Calls are numbered from 0 across all collectives
// (AllToAllV, AllGather, Barrier; AllToAllVHost and ExchangeCounts count as one AllToAllV). Used to prove that a
// peer that dies or stalls becomes an error on every other rank, never a hang.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"

namespace switchyard {

struct Fault {
  enum class Kind {
    // The call never reaches the wrapped communicator: the peers wait for this rank and time out.
    // This rank itself blocks for the communicator timeout, then returns DEADLINE_EXCEEDED, as a
    // rank whose message was lost would.
    kDrop,
    // Sleeps `delay`, then makes the call (a straggler, or a stall past the peers' deadline).
    kDelay,
    // Returns `status` without making the call.
    kFail,
  };
  Kind kind = Kind::kFail;
  absl::Duration delay = absl::ZeroDuration();
  absl::Status status = absl::UnavailableError("injected fault");
};

// Owns the wrapped communicator. Same thread-safety contract as Communicator; the Inject*/KillAfter
// setters may be called from any thread.
class FaultyCommunicator final : public Communicator {
 public:
  FaultyCommunicator(std::unique_ptr<Communicator> inner, const CommunicatorOptions& options);

  // Applies `fault` to call number `call_idx` (0-based, over all collectives).
  void InjectAt(int64_t call_idx, const Fault& fault);

  // This rank "dies" when it reaches call number `num_calls`: it calls `on_kill` once (e.g.
  // `_exit` in a child process, to close its sockets the way a crash does; may be empty), and that
  // call and every later one return UNAVAILABLE without reaching the wrapped communicator.
  void KillAfter(int64_t num_calls, std::function<void()> on_kill = nullptr);

  int64_t num_calls() const;
  Communicator& inner() { return *inner_; }

  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  MemorySpace memory_space() const override { return inner_->memory_space(); }
  std::string name() const override { return "faulty(" + inner_->name() + ")"; }

  absl::Status AllToAllV(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) override;
  absl::Status AllToAllVHost(const AllToAllVBuffer& send, const AllToAllVBuffer& recv) override;
  absl::Status AllGather(const void* send_buffer, int64_t num_bytes, void* recv_buffer) override;
  absl::Status Barrier() override;
  void Abort(const std::string& reason) override { inner_->Abort(reason); }

 private:
  // Runs `call` unless a fault applies to this call number.
  absl::Status Intercept(const char* op_name, const std::function<absl::Status()>& call);

  std::unique_ptr<Communicator> inner_;
  const CommunicatorOptions options_;
  mutable absl::Mutex mu_;
  int64_t num_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int64_t, Fault> faults_ ABSL_GUARDED_BY(mu_);
  int64_t kill_at_call_ ABSL_GUARDED_BY(mu_) = -1;
  std::function<void()> on_kill_ ABSL_GUARDED_BY(mu_);
};

}  // namespace switchyard
