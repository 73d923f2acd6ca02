// The coordinator's own cost per step with a model that does no compute: the whole step loop of
// RequestManager (intake, Schedule, plan -> v1::StepRequest protos serialised to bytes and parsed
// back as a worker would, a StepResponse serialised and parsed, Update, per-request
// IncrementalDecoder + StopChecker on a real BPE tokenizer, Deltas to sinks). Printed beside the
// bound it must stay far under: a GPU decode step takes about 10-30 ms.
//
// The time of one step is the interval between consecutive ServingObserver::OnStep calls on the
// loop thread, so it covers everything the loop does per step (incl. the snapshot and the wake-up
// check), not only RunStep. "fake workers" is the executor's share: proto conversion,
// SerializeToString and ParseFromString of the request and the response, and AppendStepResponse.
// In churn the replacements come from the main thread, so on a busy machine the running count can
// dip below 256 for a while (the mean is printed).
//
// Scenarios (4 workers, 256 concurrent requests, block_size 16, Qwen3-style BPE, vocab 4096):
//   decode: 256 requests (128-token prompts, ignore_eos, max_tokens 7000) in steady-state decode;
//   churn:  requests finish after 64-256 tokens and are replaced at once by new ones with a shared
//           256-token system prompt + 256-1024 own tokens (chunked prefills mixed with decodes).
// Every request has one stop string that never matches, so the StopChecker does its usual work.
//
//   build/bin/bench-coordinator [--steps N]   (default 3000 measured steps per scenario)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "common/tokenizer.h"
#include "common/tokenizer_maker.h"
#include "coordinator/request_manager.h"
#include "coordinator/request_prep.h"
#include "coordinator/step_executor.h"

namespace switchyard {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kNumWorkers = 4;
constexpr int kNumRequests = 256;
constexpr int64_t kVocab = 4096;
constexpr int64_t kMaxModelLen = 8192;
constexpr int kWarmupSteps = 200;
constexpr int64_t kDecodeMaxTokens = kMaxModelLen - 256;  // prompts are 128 tokens

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Text for prompts and for the "model" output, so detokenization produces real words.
constexpr const char* kCorpus =
    "The step loop takes new requests, schedules a batch, sends each worker its share of the "
    "plan and waits for the sampled tokens. Every token then goes through the detokenizer and "
    "the stop checker before the text is streamed back to the client. Die Schritte wiederholen "
    "sich tausendfach pro Minute; les travailleurs calculent, le coordinateur compte. "
    "Numbers like 3.14159, 2026-11-27 and 0x1F600 appear too, with code: for (int i = 0; i < n; "
    "++i) { sum += x[i]; } and some punctuation -- quotes \"like this\" and (parentheses). ";

// Four fake workers behind one executor: each plan goes the way the gRPC path sends it (convert,
// serialise, parse), and each sequence to sample gets a deterministic token from `script`.
class SerializingExecutor final : public StepExecutor {
 public:
  explicit SerializingExecutor(std::vector<int32_t> script) : script_(std::move(script)) {}

  absl::Status Execute(const StepPlan& plan, StepOutcome* outcome) override {
    const Clock::time_point start = Clock::now();
    outcome->Clear();
    outcome->result.step_id = plan.step_id;
    requests_.resize(plan.workers.size());
    last_num_sampled_ = 0;
    for (size_t i = 0; i < plan.workers.size(); ++i) {
      ToStepRequest(plan.step_id, plan.workers[i], &requests_[i]);
      if (!requests_[i].SerializeToString(&wire_) || !received_.ParseFromString(wire_)) {
        return absl::InternalError("StepRequest did not round-trip through its wire form");
      }
      request_bytes_ += wire_.size();
      response_.Clear();
      response_.set_step_id(received_.step_id());
      for (const v1::SequenceWork& work : received_.work()) {
        if (!work.sample()) continue;
        const uint64_t pos = static_cast<uint64_t>(work.start_position() + work.num_tokens());
        v1::SampledToken* token = response_.add_tokens();
        token->set_seq_id(work.seq_id());
        token->set_token_id(script_[(pos + static_cast<uint64_t>(work.seq_id()) * 13) %
                                    script_.size()]);
        token->set_logprob(-0.5f);
      }
      response_.mutable_stats()->set_num_tokens(received_.token_ids_size());
      response_.mutable_stats()->set_rows_routed(received_.token_ids_size() * 8);
      if (!response_.SerializeToString(&wire_) || !parsed_.ParseFromString(wire_)) {
        return absl::InternalError("StepResponse did not round-trip through its wire form");
      }
      response_bytes_ += wire_.size();
      last_num_sampled_ += parsed_.tokens_size();
      AppendStepResponse(parsed_, outcome);
    }
    last_seconds_ = Seconds(Clock::now() - start);
    return absl::OkStatus();
  }

  // Loop thread only (read from the observer's OnStep).
  double last_seconds() const { return last_seconds_; }
  int64_t last_num_sampled() const { return last_num_sampled_; }
  uint64_t request_bytes() const { return request_bytes_; }
  uint64_t response_bytes() const { return response_bytes_; }

 private:
  std::vector<int32_t> script_;
  std::vector<v1::StepRequest> requests_;
  v1::StepRequest received_;
  v1::StepResponse response_, parsed_;
  std::string wire_;
  double last_seconds_ = 0;
  int64_t last_num_sampled_ = 0;
  uint64_t request_bytes_ = 0, response_bytes_ = 0;
};

struct StepRecord {
  double step_s = 0, executor_s = 0;
  int64_t num_sampled = 0, num_prefill_tokens = 0, num_running = 0;
  uint64_t request_bytes = 0, response_bytes = 0;  // cumulative, at this step
};

// Times the loop from one OnStep to the next; signals once `target` steps are recorded.
class StepClock final : public ServingObserver {
 public:
  explicit StepClock(int num_steps) : target_(kWarmupSteps + num_steps) {
    records_.reserve(target_);
  }
  void set_executor(const SerializingExecutor* executor) { executor_ = executor; }

  void OnStep(const SchedulerStats& stats, int64_t /*num_tokens*/,
              std::optional<double> /*balancedness*/) override {
    const Clock::time_point now = Clock::now();
    if (started_ && static_cast<int>(records_.size()) < target_) {
      records_.push_back(StepRecord{Seconds(now - last_), executor_->last_seconds(),
                                    executor_->last_num_sampled(),
                                    stats.last_step_num_prefill_tokens, stats.num_running,
                                    executor_->request_bytes(), executor_->response_bytes()});
      if (static_cast<int>(records_.size()) == target_) done_.Notify();
    }
    started_ = true;
    last_ = now;
  }

  bool done() const { return done_.HasBeenNotified(); }
  void Wait() const { done_.WaitForNotification(); }
  // Valid after the loop has stopped.
  std::vector<StepRecord> measured() const {
    return std::vector<StepRecord>(records_.begin() + kWarmupSteps, records_.end());
  }

 private:
  const int target_;
  const SerializingExecutor* executor_ = nullptr;
  std::vector<StepRecord> records_;
  Clock::time_point last_;
  bool started_ = false;
  absl::Notification done_;
};

// What the sinks saw, over the whole run (read after the loop has stopped).
struct StreamTotals {
  std::atomic<int64_t> num_deltas{0}, num_text_bytes{0}, num_finished{0}, num_failed{0};
};

// Counts messages and drops them; tells the driver when a stream has ended.
class CountingSink final : public ResponseSink {
 public:
  CountingSink(StreamTotals* totals, std::function<void()> on_end)
      : totals_(totals), on_end_(std::move(on_end)) {}
  void SendDelta(v1::Delta delta) override {
    totals_->num_deltas.fetch_add(1, std::memory_order_relaxed);
    totals_->num_text_bytes.fetch_add(delta.text().size(), std::memory_order_relaxed);
  }
  void Finish(v1::Finished /*finished*/) override {
    totals_->num_finished.fetch_add(1, std::memory_order_relaxed);
    on_end_();
  }
  void Fail(absl::Status /*status*/) override {
    totals_->num_failed.fetch_add(1, std::memory_order_relaxed);
    on_end_();
  }

 private:
  StreamTotals* totals_;
  std::function<void()> on_end_;
};

class Driver {
 public:
  Driver(bool churn, const ModelContext& model, const std::vector<int32_t>& corpus_ids)
      : churn_(churn), model_(model), corpus_ids_(corpus_ids) {}

  absl::Status Submit(RequestManager& manager) {
    v1::GenerateRequest request;
    auto* ids = request.mutable_token_ids();
    int64_t num_prompt = 128;
    int64_t max_tokens = kDecodeMaxTokens;
    if (churn_) {
      for (int i = 0; i < 256; ++i) ids->add_ids(corpus_ids_[i % corpus_ids_.size()]);
      num_prompt = std::uniform_int_distribution<int64_t>(256, 1024)(rng_);
      max_tokens = std::uniform_int_distribution<int64_t>(64, 256)(rng_);
    }
    const size_t offset = rng_() % corpus_ids_.size();
    for (int64_t i = 0; i < num_prompt; ++i) {
      ids->add_ids(corpus_ids_[(offset + i) % corpus_ids_.size()]);
    }
    request.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(max_tokens));
    request.mutable_stopping()->set_ignore_eos(true);
    request.mutable_stopping()->add_stop("###END###");
    SY_ASSIGN_OR_RETURN(PreparedRequest prepared, PrepareRequest(request, model_, rng_()));
    auto sink = std::make_shared<CountingSink>(&totals_, [this] {
      absl::MutexLock lock(&mu_);
      ++num_ended_;
    });
    SY_ASSIGN_OR_RETURN(std::string id, manager.Submit(std::move(prepared), absl::InfiniteFuture(),
                                                       std::move(sink)));
    (void)id;
    return absl::OkStatus();
  }

  // Keeps 256 requests live (churn) until `clock` has its steps.
  absl::Status Run(RequestManager& manager, const StepClock& clock) {
    for (int i = 0; i < kNumRequests; ++i) SY_RETURN_IF_ERROR(Submit(manager));
    if (!churn_) {
      clock.Wait();
      return absl::OkStatus();
    }
    while (!clock.done()) {
      int num_new = 0;
      {
        absl::MutexLock lock(&mu_);
        mu_.AwaitWithTimeout(absl::Condition(
                                 +[](int64_t* n) { return *n > 0; }, &num_ended_),
                             absl::Milliseconds(20));
        num_new = static_cast<int>(num_ended_);
        num_ended_ = 0;
      }
      for (int i = 0; i < num_new; ++i) SY_RETURN_IF_ERROR(Submit(manager));
    }
    return absl::OkStatus();
  }

  const StreamTotals& totals() const { return totals_; }

 private:
  const bool churn_;
  const ModelContext& model_;
  const std::vector<int32_t>& corpus_ids_;
  std::mt19937_64 rng_{42};
  StreamTotals totals_;
  absl::Mutex mu_;
  int64_t num_ended_ ABSL_GUARDED_BY(mu_) = 0;
};

double Percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const size_t idx = std::min(values.size() - 1, static_cast<size_t>(q * values.size()));
  return values[idx];
}

void Print(const char* name, const std::vector<StepRecord>& records, const StreamTotals& totals) {
  std::vector<double> step_us;
  double total_s = 0, executor_s = 0;
  int64_t num_sampled = 0, num_prefill = 0, num_running = 0, min_running = kNumRequests;
  for (const StepRecord& r : records) {
    step_us.push_back(r.step_s * 1e6);
    total_s += r.step_s;
    executor_s += r.executor_s;
    num_sampled += r.num_sampled;
    num_prefill += r.num_prefill_tokens;
    num_running += r.num_running;
    min_running = std::min(min_running, r.num_running);
  }
  const double n = static_cast<double>(records.size());
  const double mean_us = total_s / n * 1e6;
  const double wire_bytes =
      static_cast<double>(records.back().request_bytes - records.front().request_bytes +
                          records.back().response_bytes - records.front().response_bytes);
  std::printf("== %s: %d workers, %d concurrent requests, %zu measured steps\n", name,
              kNumWorkers, kNumRequests, records.size());
  std::printf("  per step: mean %.0f us, p50 %.0f us, p99 %.0f us, max %.0f us\n", mean_us,
              Percentile(step_us, 0.50), Percentile(step_us, 0.99), Percentile(step_us, 1.0));
  std::printf("  steps/s %.0f; tokens/s through the loop %.0f (%.1f sampled + %.1f prefill "
              "tokens per step; %.1f running, min %lld)\n",
              n / total_s, static_cast<double>(num_sampled) / total_s,
              static_cast<double>(num_sampled) / n, static_cast<double>(num_prefill) / n,
              static_cast<double>(num_running) / n, static_cast<long long>(min_running));
  std::printf("  fake workers (proto convert + serialise + parse, both ways): %.0f us/step "
              "(%.0f%%), %.1f KB on the wire per step\n",
              executor_s / n * 1e6, 100.0 * executor_s / total_s, wire_bytes / n / 1e3);
  std::printf("  streamed (whole run): %lld deltas, %lld text bytes, %lld finished, %lld ended "
              "by the stop at the end\n",
              static_cast<long long>(totals.num_deltas.load()),
              static_cast<long long>(totals.num_text_bytes.load()),
              static_cast<long long>(totals.num_finished.load()),
              static_cast<long long>(totals.num_failed.load()));
  std::printf("  mean step / GPU step: %.3f of 10 ms, %.3f of 30 ms (p99: %.3f, %.3f)\n",
              mean_us / 10e3, mean_us / 30e3, Percentile(step_us, 0.99) / 10e3,
              Percentile(step_us, 0.99) / 30e3);
}

absl::Status RunScenario(const char* name, bool churn, int num_steps, const ModelContext& model,
                         const std::vector<int32_t>& corpus_ids) {
  RequestManagerOptions options;
  options.model = model;
  options.scheduler.block_size = 16;
  options.scheduler.max_model_len = kMaxModelLen;
  options.scheduler.max_num_batched_tokens = 2048;
  options.scheduler.max_num_seqs = kNumRequests / kNumWorkers;
  options.scheduler.max_waiting = 1024;
  StepClock clock(num_steps);
  auto executor = std::make_unique<SerializingExecutor>(corpus_ids);
  clock.set_executor(executor.get());
  RequestManager manager(options, &clock);
  SY_RETURN_IF_ERROR(
      manager.Start(std::vector<int64_t>(kNumWorkers, 32768), std::move(executor)));
  Driver driver(churn, model, corpus_ids);
  absl::Status status = driver.Run(manager, clock);
  manager.Stop();
  SY_RETURN_IF_ERROR(status);
  Print(name, clock.measured(), driver.totals());
  return absl::OkStatus();
}

absl::Status Main(int num_steps) {
  if (kWarmupSteps + num_steps >= kDecodeMaxTokens) {
    return absl::InvalidArgumentError(absl::StrCat("--steps ", num_steps, ": the decode scenario's "
                                                   "requests end after ", kDecodeMaxTokens,
                                                   " tokens; use at most ",
                                                   kDecodeMaxTokens - kWarmupSteps - 1));
  }
  SY_ASSIGN_OR_RETURN(MadeTokenizer made, MakeTokenizer(ModelFamily::kQwen3Moe, kVocab));
  SY_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::FromJson(made.json));
  std::string text;
  for (int i = 0; i < 8; ++i) text += kCorpus;
  SY_ASSIGN_OR_RETURN(std::vector<int32_t> corpus_ids,
                      tokenizer->Encode(text, /*add_special_tokens=*/false));
  ModelContext model;
  model.tokenizer = tokenizer.get();
  model.vocab_size = made.vocab_size;
  model.max_model_len = kMaxModelLen;
  for (int64_t id : made.eos_token_ids) model.eos_token_ids.push_back(static_cast<int32_t>(id));
  SY_RETURN_IF_ERROR(RunScenario("decode", /*churn=*/false, num_steps, model, corpus_ids));
  SY_RETURN_IF_ERROR(RunScenario("churn", /*churn=*/true, num_steps, model, corpus_ids));
  return absl::OkStatus();
}

}  // namespace
}  // namespace switchyard

int main(int argc, char** argv) {
  int num_steps = 3000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--steps" && absl::SimpleAtoi(argv[i + 1], &num_steps) &&
        num_steps > 0) {
      continue;
    }
    std::fprintf(stderr, "usage: %s [--steps N]\n", argv[0]);
    return 2;
  }
  const absl::Status status = switchyard::Main(num_steps);
  if (!status.ok()) {
    std::fprintf(stderr, "bench-coordinator: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
