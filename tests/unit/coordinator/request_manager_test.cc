// The step loop end to end in one process: RequestManager + Scheduler + a fake StepExecutor whose
// "model" emits a scripted token sequence, so every expectation below is known in advance.
#include "coordinator/request_manager.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/tokenizer.h"
#include "common/tokenizer_maker.h"
#include "coordinator/request_prep.h"
#include "gtest/gtest.h"

namespace switchyard {
namespace {

constexpr int32_t kEos = 2;
constexpr int64_t kVocab = 512;
constexpr int64_t kContext = 256;

// Output token i of every sequence is script[i % script.size()].
class ScriptedExecutor final : public StepExecutor {
 public:
  explicit ScriptedExecutor(std::vector<int32_t> script, bool fail = false)
      : script_(std::move(script)), fail_(fail) {}

  absl::Status Execute(const StepPlan& plan, StepOutcome* outcome) override {
    outcome->Clear();
    outcome->result.step_id = plan.step_id;
    if (fail_) return absl::UnavailableError("rank 1: peer died in all-to-all");
    absl::SleepFor(absl::Milliseconds(1));  // give Abort/Cancel a chance to land mid-stream
    for (const WorkerStepPlan& worker : plan.workers) {
      for (const NewSequence& seq : worker.new_sequences) {
        num_prompt_[seq.seq_id] = seq.num_prompt_tokens;
      }
      for (const SequenceWork& work : worker.work) {
        if (!work.sample) continue;
        const int64_t output_idx = work.start_position + work.num_tokens - num_prompt_[work.seq_id];
        const int32_t token = script_[output_idx % script_.size()];
        outcome->result.tokens.push_back(SampledTokenResult{work.seq_id, token, -0.5f});
      }
      outcome->rows_routed.push_back(static_cast<uint64_t>(worker.num_tokens()) * 2);
    }
    return absl::OkStatus();
  }

 private:
  std::vector<int32_t> script_;
  bool fail_;
  absl::flat_hash_map<int64_t, int64_t> num_prompt_;
};

class RecordingSink final : public ResponseSink {
 public:
  void SendDelta(v1::Delta delta) override {
    absl::MutexLock lock(&mu_);
    for (int32_t id : delta.token_ids()) token_ids_.push_back(id);
    text_ += delta.text();
    ++num_deltas_;
  }
  void Finish(v1::Finished finished) override {
    absl::MutexLock lock(&mu_);
    finished_ = std::move(finished);
    done_ = true;
  }
  void Fail(absl::Status status) override {
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
    done_ = true;
  }
  void WaitDone() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }
  void WaitForDeltas(int num) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, num]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return num_deltas_ >= num || done_;
    };
    mu_.Await(absl::Condition(&enough));
  }
  std::vector<int32_t> token_ids() { absl::MutexLock l(&mu_); return token_ids_; }
  std::string text() { absl::MutexLock l(&mu_); return text_; }
  std::optional<v1::Finished> finished() { absl::MutexLock l(&mu_); return finished_; }
  absl::Status status() { absl::MutexLock l(&mu_); return status_; }

 private:
  absl::Mutex mu_;
  std::vector<int32_t> token_ids_ ABSL_GUARDED_BY(mu_);
  std::string text_ ABSL_GUARDED_BY(mu_);
  int num_deltas_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<v1::Finished> finished_ ABSL_GUARDED_BY(mu_);
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

ModelContext TokenOnlyModel() {
  ModelContext model;
  model.vocab_size = kVocab;
  model.max_model_len = kContext;
  model.eos_token_ids = {kEos};
  return model;
}

std::unique_ptr<RequestManager> StartManager(ModelContext model, std::vector<int32_t> script,
                                             bool fail = false) {
  RequestManagerOptions options;
  options.model = model;
  options.scheduler.block_size = 4;
  options.scheduler.max_model_len = kContext;
  options.scheduler.max_num_batched_tokens = 64;
  options.scheduler.max_num_seqs = 8;
  auto manager = std::make_unique<RequestManager>(options, nullptr);
  absl::Status status =
      manager->Start({64, 64}, std::make_unique<ScriptedExecutor>(std::move(script), fail));
  EXPECT_TRUE(status.ok()) << status;
  return manager;
}

v1::GenerateRequest TokenRequest(std::vector<int32_t> prompt, uint32_t max_tokens) {
  v1::GenerateRequest request;
  for (int32_t id : prompt) request.mutable_token_ids()->add_ids(id);
  request.mutable_stopping()->set_max_tokens(max_tokens);
  return request;
}

std::shared_ptr<RecordingSink> Submit(RequestManager& manager, const v1::GenerateRequest& request,
                                      const ModelContext& model, std::string* id = nullptr) {
  absl::StatusOr<PreparedRequest> prepared = PrepareRequest(request, model, /*random_seed=*/7);
  EXPECT_TRUE(prepared.ok()) << prepared.status();
  auto sink = std::make_shared<RecordingSink>();
  absl::StatusOr<std::string> assigned =
      manager.Submit(*std::move(prepared), absl::InfiniteFuture(), sink);
  EXPECT_TRUE(assigned.ok()) << assigned.status();
  if (id != nullptr && assigned.ok()) *id = *assigned;
  return sink;
}

TEST(RequestManagerTest, StreamsUntilMaxTokensWithUsage) {
  const ModelContext model = TokenOnlyModel();
  auto manager = StartManager(model, {10, 11, 12, 13, 14, 15, 16});
  auto sink = Submit(*manager, TokenRequest({5, 6, 7}, 5), model);
  sink->WaitDone();
  EXPECT_EQ(sink->token_ids(), (std::vector<int32_t>{10, 11, 12, 13, 14}));
  ASSERT_TRUE(sink->finished().has_value()) << sink->status();
  EXPECT_EQ(sink->finished()->reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(sink->finished()->usage().prompt_tokens(), 3u);
  EXPECT_EQ(sink->finished()->usage().completion_tokens(), 5u);
  EXPECT_EQ(manager->num_live(), 0);
}

TEST(RequestManagerTest, EosStopsWithTheStopTokenId) {
  const ModelContext model = TokenOnlyModel();
  auto manager = StartManager(model, {20, 21, kEos, 22});
  auto sink = Submit(*manager, TokenRequest({5, 6}, 50), model);
  sink->WaitDone();
  EXPECT_EQ(sink->token_ids(), (std::vector<int32_t>{20, 21, kEos}));
  ASSERT_TRUE(sink->finished().has_value()) << sink->status();
  EXPECT_EQ(sink->finished()->reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(sink->finished()->stop_token_id(), kEos);
  EXPECT_EQ(sink->finished()->usage().completion_tokens(), 3u);
}

TEST(RequestManagerTest, StopStringIsNeverStreamed) {
  absl::StatusOr<MadeTokenizer> made = MakeTokenizer(ModelFamily::kQwen3Moe, kVocab);
  ASSERT_TRUE(made.ok()) << made.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromJson(made->json);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<std::vector<int32_t>> script =
      (*tokenizer)->Encode("Hello world, the end is here.", /*add_special_tokens=*/false);
  ASSERT_TRUE(script.ok()) << script.status();
  ModelContext model = TokenOnlyModel();
  model.tokenizer = tokenizer->get();
  auto manager = StartManager(model, *script);
  v1::GenerateRequest request;
  request.set_text("Say hello");
  request.mutable_stopping()->add_stop(" end");
  request.mutable_stopping()->set_max_tokens(100);
  auto sink = Submit(*manager, request, model);
  sink->WaitDone();
  ASSERT_TRUE(sink->finished().has_value()) << sink->status();
  EXPECT_EQ(sink->text(), "Hello world, the");
  EXPECT_EQ(sink->finished()->reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(sink->finished()->stop_string(), " end");
}

TEST(RequestManagerTest, AbortEndsTheStreamAndFreesTheSequence) {
  const ModelContext model = TokenOnlyModel();
  auto manager = StartManager(model, {30, 31, 32});
  std::string id;
  auto sink = Submit(*manager, TokenRequest({5, 6, 7, 8, 9}, 200), model, &id);
  sink->WaitForDeltas(2);
  ASSERT_TRUE(manager->Abort(id).ok());
  sink->WaitDone();
  ASSERT_TRUE(sink->finished().has_value()) << sink->status();
  EXPECT_EQ(sink->finished()->reason(), v1::FINISH_REASON_ABORT);
  EXPECT_LT(sink->token_ids().size(), 200u);
  EXPECT_EQ(manager->Abort(id).code(), absl::StatusCode::kNotFound);
  // The next step releases its blocks: a fresh request still runs to completion.
  auto second = Submit(*manager, TokenRequest({5}, 3), model);
  second->WaitDone();
  EXPECT_EQ(second->token_ids(), (std::vector<int32_t>{30, 31, 32}));
  // The snapshot is refreshed by the step loop after it has sent the stream's last message, so
  // wait (bounded) for it rather than racing the loop.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (manager->Snapshot().scheduler.num_running != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_EQ(manager->Snapshot().scheduler.num_running, 0);
}

TEST(RequestManagerTest, ClientCancelEndsWithCancelled) {
  const ModelContext model = TokenOnlyModel();
  auto manager = StartManager(model, {40});
  std::string id;
  auto sink = Submit(*manager, TokenRequest({5, 6}, 200), model, &id);
  sink->WaitForDeltas(1);
  manager->Cancel(id);
  sink->WaitDone();
  EXPECT_EQ(sink->status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(sink->finished().has_value());
}

TEST(RequestManagerTest, FailedStepFailsRequestsWithUnavailable) {
  const ModelContext model = TokenOnlyModel();
  auto manager = StartManager(model, {40}, /*fail=*/true);
  auto sink = Submit(*manager, TokenRequest({5, 6}, 10), model);
  sink->WaitDone();
  EXPECT_EQ(sink->status().code(), absl::StatusCode::kUnavailable) << sink->status();
}

TEST(RequestManagerTest, DrainRefusesNewRequests) {
  const ModelContext model = TokenOnlyModel();
  auto manager = StartManager(model, {40});
  manager->BeginDrain();
  absl::StatusOr<PreparedRequest> prepared = PrepareRequest(TokenRequest({5}, 3), model, 1);
  ASSERT_TRUE(prepared.ok());
  absl::StatusOr<std::string> id = manager->Submit(*std::move(prepared), absl::InfiniteFuture(),
                                                   std::make_shared<RecordingSink>());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnavailable);
}

TEST(RequestManagerTest, ManyConcurrentRequestsAllFinish) {
  const ModelContext model = TokenOnlyModel();
  auto manager = StartManager(model, {50, 51, 52, 53});
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 20; ++i) {
    sinks.push_back(Submit(*manager, TokenRequest({5, 6, 7, 8, 9, 10, 11, 12, 13}, 6), model));
  }
  for (auto& sink : sinks) {
    sink->WaitDone();
    ASSERT_TRUE(sink->finished().has_value()) << sink->status();
    EXPECT_EQ(sink->token_ids(), (std::vector<int32_t>{50, 51, 52, 53, 50, 51}));
  }
  EXPECT_EQ(manager->num_live(), 0);
}

// Blocks inside its first step until released, so requests can pile up in the intake queue.
class GatedExecutor final : public StepExecutor {
 public:
  absl::Status Execute(const StepPlan& plan, StepOutcome* outcome) override {
    if (!entered_.HasBeenNotified()) entered_.Notify();
    release_.WaitForNotification();
    return inner_.Execute(plan, outcome);
  }
  absl::Notification entered_;
  absl::Notification release_;

 private:
  ScriptedExecutor inner_{{60}};
};

TEST(RequestManagerTest, FullQueueRejectsWithResourceExhausted) {
  const ModelContext model = TokenOnlyModel();
  RequestManagerOptions options;
  options.model = model;
  options.scheduler.block_size = 4;
  options.scheduler.max_model_len = kContext;
  options.scheduler.max_num_batched_tokens = 64;
  options.scheduler.max_num_seqs = 1;
  options.scheduler.max_waiting = 1;
  RequestManager manager(options, nullptr);
  auto executor = std::make_unique<GatedExecutor>();
  GatedExecutor* gate = executor.get();
  ASSERT_TRUE(manager.Start({64}, std::move(executor)).ok());
  auto running = Submit(manager, TokenRequest({5}, 2), model);
  gate->entered_.WaitForNotification();  // the first request holds the only seat
  auto waiting = Submit(manager, TokenRequest({5}, 2), model);
  auto rejected = Submit(manager, TokenRequest({5}, 2), model);
  gate->release_.Notify();
  rejected->WaitDone();
  EXPECT_EQ(rejected->status().code(), absl::StatusCode::kResourceExhausted) << rejected->status();
  running->WaitDone();
  waiting->WaitDone();
  EXPECT_TRUE(running->finished().has_value()) << running->status();
  EXPECT_TRUE(waiting->finished().has_value()) << waiting->status();
}

}  // namespace
}  // namespace switchyard
