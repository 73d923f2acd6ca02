// Runs one scheduler step on the workers: the seam between the step loop and the control plane.
//
// GrpcStepExecutor sends each WorkerStepPlan as a StepRequest to its worker's WorkerService (all
// workers at once, async stubs, one deadline) and merges the StepResponses. Tests substitute an
// in-process fake.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/scheduler/step_plan.h"
#include "switchyard/v1/control.grpc.pb.h"

namespace switchyard {

struct StepOutcome {
  StepResult result;
  // Per seq_id: the top alternatives (id, logprob) when the request asked for logprobs.
  absl::flat_hash_map<int64_t, std::vector<std::pair<int32_t, float>>> top_logprobs;
  std::vector<uint64_t> rows_routed;  // per plan entry (rank order): token rows its experts ran

  void Clear() {
    result.tokens.clear();
    top_logprobs.clear();
    rows_routed.clear();
  }
};

// Called by one thread (the step loop).
class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  // Runs `plan` on every worker; fills `outcome`. Any worker's failure fails the step (the status
  // names the rank); the caller then aborts the step.
  virtual absl::Status Execute(const StepPlan& plan, StepOutcome* outcome) = 0;
  // Makes an Execute in progress on another thread fail soon (e.g. a worker was declared lost
  // while the step waits on it). Thread-safe; no effect when no step is in flight.
  virtual void CancelInFlight() {}
};

// Conversions between the scheduler's plain structs and the control protos.
void ToStepRequest(int64_t step_id, const WorkerStepPlan& plan, v1::StepRequest* request);
void AppendStepResponse(const v1::StepResponse& response, StepOutcome* outcome);

// `stubs[rank]` is the worker of that rank. Thread-compatible (one caller at a time).
class GrpcStepExecutor final : public StepExecutor {
 public:
  // `on_rpc_error` (optional) is called once per failed ExecuteStep call, for the metrics.
  GrpcStepExecutor(std::vector<std::shared_ptr<v1::WorkerService::Stub>> stubs,
                   absl::Duration step_timeout,
                   std::function<void(absl::StatusCode)> on_rpc_error = nullptr);
  absl::Status Execute(const StepPlan& plan, StepOutcome* outcome) override;
  void CancelInFlight() override;

 private:
  std::vector<std::shared_ptr<v1::WorkerService::Stub>> stubs_;
  absl::Duration step_timeout_;
  std::function<void(absl::StatusCode)> on_rpc_error_;
  std::vector<v1::StepRequest> requests_;  // reused from step to step
  std::vector<v1::StepResponse> responses_;
  absl::Mutex cancel_mu_;
  std::vector<grpc::ClientContext>* in_flight_ ABSL_GUARDED_BY(cancel_mu_) = nullptr;
};

}  // namespace switchyard
