// The coordinator's step loop: owns the Scheduler (not thread-safe) on one thread and turns its
// events into the client's stream.
//
// The API threads hand requests in through Submit (a queue; never blocks on the loop). Each step
// the loop takes new requests (Scheduler::Add; a rejection goes straight back to the client),
// aborts and cancellations, calls Schedule, runs the plan on every worker through a StepExecutor,
// feeds the results to Update, and for each sampled token runs the request's IncrementalDecoder
// and StopChecker and streams the released text as a Delta. A stop condition calls
// Scheduler::Finish; every request ends with exactly one Finished message or one error status.
// When no request is live the loop sleeps on a condition.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/stop_checker.h"
#include "common/tokenizer.h"
#include "coordinator/request_prep.h"
#include "coordinator/scheduler/scheduler.h"
#include "coordinator/step_executor.h"
#include "switchyard/v1/inference.pb.h"

namespace switchyard {

// Where one request's responses go (the Generate call's reactor, or a test's recorder).
// Implementations are thread-safe and never block. After Finish or Fail nothing more is sent.
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  virtual void SendDelta(v1::Delta delta) = 0;
  // Sends the Finished message, then ends the stream with OK.
  virtual void Finish(v1::Finished finished) = 0;
  // Ends the stream with a non-OK status (no Finished message).
  virtual void Fail(absl::Status status) = 0;
};

// Observations for the metrics (docs/metrics.md). Called on the step loop thread only, except
// OnRejected, which any thread may call. Default: ignore.
class ServingObserver {
 public:
  virtual ~ServingObserver() = default;
  virtual void OnRejected(absl::StatusCode /*code*/) {}
  virtual void OnAdmitted(int64_t /*num_prompt_tokens*/) {}
  virtual void OnScheduled(absl::Duration /*queue_time*/) {}
  virtual void OnFirstToken(absl::Duration /*ttft*/, absl::Duration /*prefill_time*/) {}
  virtual void OnTokens(int64_t /*num_tokens*/, std::optional<absl::Duration> /*itl*/) {}
  // finished_reason: "stop", "length" or "abort".
  virtual void OnFinished(const char* /*finished_reason*/, absl::Duration /*e2e*/,
                          absl::Duration /*decode_time*/) {}
  virtual void OnFailed(absl::StatusCode /*code*/) {}
  // After each step: the scheduler's stats, the step's tokens, and the balancedness of the
  // rows routed to each rank (mean / max; absent when no rows were routed).
  virtual void OnStep(const SchedulerStats& /*stats*/, int64_t /*num_tokens*/,
                      std::optional<double> /*balancedness*/) {}
};

struct RequestManagerOptions {
  SchedulerOptions scheduler;  // worker_num_blocks is set by Start
  ModelContext model;
  // Idle wait when requests are live but nothing could be scheduled (e.g. all waiting on blocks).
  absl::Duration stall_wait = absl::Milliseconds(5);
};

struct ManagerSnapshot {
  SchedulerStats scheduler;
  std::vector<uint64_t> rows_routed;  // per rank, since start: token rows its experts computed
};

// Thread-safe. Start() runs the loop thread ("step-loop"); Stop() ends it.
class RequestManager {
 public:
  RequestManager(RequestManagerOptions options, ServingObserver* observer);
  ~RequestManager();

  RequestManager(const RequestManager&) = delete;
  RequestManager& operator=(const RequestManager&) = delete;

  // Creates the scheduler for workers with these KV block counts (rank order) and starts serving.
  absl::Status Start(std::vector<int64_t> worker_num_blocks, std::unique_ptr<StepExecutor> executor);
  // Ends every live request with `status` and joins the loop.
  void Stop(absl::Status status = absl::UnavailableError("the server is shutting down"));

  // Hands a prepared request to the loop. Returns its id (assigned when empty). UNAVAILABLE when
  // not serving (starting, draining, cluster lost); ALREADY_EXISTS for an id in use. Later errors
  // (queue full: RESOURCE_EXHAUSTED) reach the sink.
  absl::StatusOr<std::string> Submit(PreparedRequest request, absl::Time deadline,
                                     std::shared_ptr<ResponseSink> sink);
  // The Abort RPC: the stream ends with FINISH_REASON_ABORT within one step. NOT_FOUND for an
  // unknown id.
  absl::Status Abort(const std::string& request_id);
  // The client went away (or its deadline passed): the sequence is freed within one step and the
  // stream ends with `why` (CANCELLED or DEADLINE_EXCEEDED).
  void Cancel(const std::string& request_id,
              absl::Status why = absl::CancelledError("the client cancelled the call"));
  // Ends every live request with `status` (e.g. a worker was lost); with stop_serving, new
  // requests get UNAVAILABLE from now on.
  void FailAll(absl::Status status, bool stop_serving);
  // New requests get UNAVAILABLE; live ones continue.
  void BeginDrain();

  ManagerSnapshot Snapshot() const;
  int64_t num_live() const;

 private:
  struct Active;
  struct Intake {
    PreparedRequest request;
    absl::Time deadline;
    absl::Time arrival;
    std::shared_ptr<ResponseSink> sink;
  };

  void Loop();
  bool WaitForWork();
  void TakeIntake();
  void AddRequest(Intake intake);
  void HandleControl();
  // What one step leaves for the observer (and whether the loop should pause).
  struct StepSummary {
    int64_t num_tokens = 0;
    std::optional<double> balancedness;  // rows routed: mean over max across workers
    bool stalled = false;                // live requests, none of them placeable now
  };
  StepSummary RunStep();
  // Sleeps up to options_.stall_wait, or until new input or a stop arrives.
  void WaitWhileStalled();
  void HandleOutputs();
  void HandleToken(Active& active, const RequestOutput& output);
  void HandleFinish(Active& active, const RequestOutput& output);
  void MarkScheduled();
  void SendFinished(Active& active, v1::FinishReason reason, const StopResult* stop,
                    int32_t token_id, int64_t cached_prompt_tokens);
  void EndFailed(Active& active, absl::Status status);
  // With a non-OK `cancelled` the stream ends with it; else with FINISH_REASON_ABORT.
  void AbortActive(Active& active, const absl::Status& cancelled);
  void FailAllActive(const absl::Status& status);
  void Erase(Active& active);
  void PublishSnapshot(const SchedulerStats& stats);

  const RequestManagerOptions options_;
  ServingObserver* const observer_;
  ServingObserver default_observer_;

  // Loop thread only.
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<StepExecutor> executor_;
  absl::flat_hash_map<int64_t, std::unique_ptr<Active>> active_;  // by seq_id
  absl::flat_hash_map<std::string, int64_t> seq_by_id_;
  StepPlan plan_;
  StepOutcome outcome_;
  std::vector<RequestOutput> outputs_;
  std::vector<uint64_t> rows_routed_;  // per rank

  mutable absl::Mutex mu_;
  std::vector<Intake> intake_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> aborts_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, absl::Status>> cancels_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> fail_all_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> live_ids_ ABSL_GUARDED_BY(mu_);
  int64_t next_request_idx_ ABSL_GUARDED_BY(mu_) = 0;
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_busy_ ABSL_GUARDED_BY(mu_) = false;  // the scheduler has live requests
  absl::Status stop_status_ ABSL_GUARDED_BY(mu_);
  ManagerSnapshot snapshot_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace switchyard
