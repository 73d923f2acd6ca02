#include "coordinator/request_manager.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/request_manager_internal.h"

namespace switchyard {

RequestManager::RequestManager(RequestManagerOptions options, ServingObserver* observer)
    : options_(std::move(options)), observer_(observer ? observer : &default_observer_) {}

RequestManager::~RequestManager() { Stop(); }

absl::Status RequestManager::Start(std::vector<int64_t> worker_num_blocks,
                                   std::unique_ptr<StepExecutor> executor) {
  SchedulerOptions scheduler_options = options_.scheduler;
  scheduler_options.worker_num_blocks = std::move(worker_num_blocks);
  SY_ASSIGN_OR_RETURN(scheduler_, Scheduler::Create(std::move(scheduler_options)));
  executor_ = std::move(executor);
  {
    absl::MutexLock lock(&mu_);
    serving_ = true;
    snapshot_.scheduler = scheduler_->GetStats();
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void RequestManager::Stop(absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    stop_ = true;
    serving_ = false;
    stop_status_ = std::move(status);
  }
  if (thread_.joinable()) thread_.join();
  // Requests that never reached a started loop.
  absl::MutexLock lock(&mu_);
  for (Intake& intake : intake_) intake.sink->Fail(stop_status_);
  intake_.clear();
}

absl::StatusOr<std::string> RequestManager::Submit(PreparedRequest request, absl::Time deadline,
                                                   std::shared_ptr<ResponseSink> sink) {
  absl::MutexLock lock(&mu_);
  if (!serving_) {
    return absl::UnavailableError(stop_ ? "the server is shutting down"
                                        : "the server is not serving (starting, draining or "
                                          "a worker was lost)");
  }
  if (request.request_id.empty()) {
    request.request_id = absl::StrCat("req-", next_request_idx_++);
  }
  if (!live_ids_.insert(request.request_id).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("request_id '", request.request_id, "' is in use by a running request"));
  }
  std::string id = request.request_id;
  intake_.push_back(Intake{std::move(request), deadline, absl::Now(), std::move(sink)});
  return id;
}

absl::Status RequestManager::Abort(const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  if (!live_ids_.contains(request_id)) {
    return absl::NotFoundError(absl::StrCat("Abort: no running request '", request_id, "'"));
  }
  aborts_.push_back(request_id);
  return absl::OkStatus();
}

void RequestManager::Cancel(const std::string& request_id, absl::Status why) {
  absl::MutexLock lock(&mu_);
  if (live_ids_.contains(request_id)) cancels_.emplace_back(request_id, std::move(why));
}

void RequestManager::FailAll(absl::Status status, bool stop_serving) {
  {
    absl::MutexLock lock(&mu_);
    fail_all_ = std::move(status);
    if (stop_serving) {
      serving_ = false;
    }
  }
  // A step waiting on a lost worker would otherwise wait for the step timeout.
  if (executor_ != nullptr) executor_->CancelInFlight();
}

void RequestManager::BeginDrain() {
  absl::MutexLock lock(&mu_);
  serving_ = false;
}

ManagerSnapshot RequestManager::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return snapshot_;
}

int64_t RequestManager::num_live() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(live_ids_.size());
}

void RequestManager::Loop() {
  while (WaitForWork()) {
    TakeIntake();
    HandleControl();
    // No live request (e.g. the last one aborted): the gauges still update.
    const StepSummary step = scheduler_->num_live_requests() > 0 ? RunStep() : StepSummary{};
    const SchedulerStats stats = scheduler_->GetStats();
    observer_->OnStep(stats, step.num_tokens, step.balancedness);
    PublishSnapshot(stats);
    if (step.stalled) WaitWhileStalled();
  }
  absl::Status status;
  {
    absl::MutexLock lock(&mu_);
    status = stop_status_;
  }
  TakeIntake();
  FailAllActive(status);
  PublishSnapshot(scheduler_->GetStats());
}

// Sleeps until there is something to do. Returns false when the loop must stop.
bool RequestManager::WaitForWork() {
  absl::MutexLock lock(&mu_);
  auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || loop_busy_ || !intake_.empty() || !aborts_.empty() || !cancels_.empty() ||
           fail_all_.has_value();
  };
  mu_.Await(absl::Condition(&has_work));
  return !stop_;
}

void RequestManager::TakeIntake() {
  std::vector<Intake> intake;
  {
    absl::MutexLock lock(&mu_);
    intake.swap(intake_);
  }
  for (Intake& item : intake) AddRequest(std::move(item));
}

void RequestManager::AddRequest(Intake intake) {
  SchedulerRequest request;
  request.request_id = intake.request.request_id;
  request.prompt_token_ids = intake.request.prompt_token_ids;
  request.max_tokens = intake.request.stop.max_tokens;
  request.sampling = intake.request.sampling;
  request.deadline = intake.deadline;
  absl::StatusOr<int64_t> seq_id = scheduler_->Add(std::move(request));
  if (!seq_id.ok()) {
    observer_->OnRejected(seq_id.status().code());
    {
      absl::MutexLock lock(&mu_);
      live_ids_.erase(intake.request.request_id);
    }
    intake.sink->Fail(seq_id.status());
    return;
  }
  SY_CHECK(intake.request.checker.has_value());  // PrepareRequest built it
  StopChecker checker = *std::move(intake.request.checker);
  auto active = std::make_unique<Active>(std::move(intake), *seq_id, std::move(checker),
                                         options_.model.tokenizer);
  observer_->OnAdmitted(active->num_prompt_tokens);
  seq_by_id_[active->request_id] = *seq_id;
  active_[*seq_id] = std::move(active);
}

void RequestManager::HandleControl() {
  std::vector<std::string> aborts;
  std::vector<std::pair<std::string, absl::Status>> cancels;
  std::optional<absl::Status> fail_all;
  {
    absl::MutexLock lock(&mu_);
    aborts.swap(aborts_);
    cancels.swap(cancels_);
    fail_all.swap(fail_all_);
  }
  for (const std::string& id : aborts) {
    auto it = seq_by_id_.find(id);
    if (it != seq_by_id_.end()) AbortActive(*active_.at(it->second), absl::OkStatus());
  }
  for (const auto& [id, why] : cancels) {
    auto it = seq_by_id_.find(id);
    if (it != seq_by_id_.end()) AbortActive(*active_.at(it->second), why);
  }
  if (fail_all.has_value()) FailAllActive(*fail_all);
}

RequestManager::StepSummary RequestManager::RunStep() {
  outputs_.clear();
  absl::Status status = scheduler_->Schedule(absl::Now(), &plan_, &outputs_);
  if (!status.ok()) {
    SY_LOG_ERROR("Schedule failed: {}", status.ToString());
    FailAllActive(absl::InternalError(absl::StrCat("scheduler: ", status.message())));
    return {};
  }
  MarkScheduled();
  bool all_empty = true;
  for (const WorkerStepPlan& worker : plan_.workers) all_empty = all_empty && worker.empty();
  if (all_empty) {
    outcome_.Clear();
    outcome_.result.step_id = plan_.step_id;
  } else {
    status = executor_->Execute(plan_, &outcome_);
  }
  if (!status.ok()) {
    SY_LOG_ERROR("step {} failed: {}", plan_.step_id, status.ToString());
    scheduler_->AbortStep();
    HandleOutputs();
    absl::Status why = absl::UnavailableError(status.message());
    {
      absl::MutexLock lock(&mu_);
      if (fail_all_.has_value()) why = *fail_all_;  // the step was cancelled for this reason
    }
    FailAllActive(why);
    return {};
  }
  status = scheduler_->Update(outcome_.result, &outputs_);
  if (!status.ok()) {
    SY_LOG_ERROR("step {}: bad results: {}", plan_.step_id, status.ToString());
    scheduler_->AbortStep();
    HandleOutputs();
    FailAllActive(absl::InternalError(absl::StrCat("step results: ", status.message())));
    return {};
  }
  HandleOutputs();
  for (size_t i = 0; i < outcome_.rows_routed.size() && i < plan_.workers.size(); ++i) {
    const size_t rank = static_cast<size_t>(plan_.workers[i].rank);
    if (rows_routed_.size() <= rank) rows_routed_.resize(rank + 1, 0);
    rows_routed_[rank] += outcome_.rows_routed[i];
  }
  StepSummary summary;
  summary.num_tokens = plan_.num_tokens();
  uint64_t max_rows = 0, sum_rows = 0;
  for (uint64_t rows : outcome_.rows_routed) {
    max_rows = std::max(max_rows, rows);
    sum_rows += rows;
  }
  if (max_rows > 0) {
    summary.balancedness = static_cast<double>(sum_rows) /
                           static_cast<double>(outcome_.rows_routed.size()) /
                           static_cast<double>(max_rows);
  }
  // Live requests that cannot be placed yet: the loop must not spin.
  summary.stalled = all_empty && outputs_.empty();
  return summary;
}

void RequestManager::WaitWhileStalled() {
  absl::MutexLock lock(&mu_);
  auto interrupted = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || !intake_.empty() || !aborts_.empty() || !cancels_.empty() ||
           fail_all_.has_value();
  };
  mu_.AwaitWithTimeout(absl::Condition(&interrupted), options_.stall_wait);
}

void RequestManager::MarkScheduled() {
  const absl::Time now = absl::Now();
  // A sequence is scheduled for the first time in the step that places it (a new sequence on its
  // worker); a preempted one comes back as new too, but was stamped already.
  for (const WorkerStepPlan& worker : plan_.workers) {
    for (const NewSequence& placed : worker.new_sequences) {
      auto it = active_.find(placed.seq_id);
      if (it == active_.end() || it->second->scheduled != absl::InfinitePast()) continue;
      it->second->scheduled = now;
      observer_->OnScheduled(now - it->second->arrival);
    }
  }
}

void RequestManager::PublishSnapshot(const SchedulerStats& stats) {
  absl::MutexLock lock(&mu_);
  snapshot_.scheduler = stats;
  snapshot_.rows_routed = rows_routed_;
  loop_busy_ = scheduler_->num_live_requests() > 0;
}

}  // namespace switchyard
