// The coordinator scheduler's own cost per step (Schedule + Update; no model, no RPC), with a
// fake model that samples token 1 for every sequence that asks. Printed beside the bound it must
// stay far under: a GPU decode step takes about 10-30 ms, and the coordinator's work should
// overlap it, so the figure is also given as a fraction of 10 ms.
//
// Scenarios (4 workers, 256 running sequences, block_size 16):
//   decode:   every sequence in steady-state decode (prompt 512, long outputs);
//   churn:    sequences finish after 64-256 tokens and are replaced at once by new ones with a
//             shared 256-token system prompt + 256-1024 own tokens (prefix-cache hits, chunked
//             prefills mixed with decodes, blocks freed and evicted).
//
//   build/bin/bench-scheduler [--steps N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/scheduler/scheduler.h"

// Counts heap allocations, to show that a decode step allocates nothing.
static int64_t g_num_allocations = 0;
void* operator new(size_t size) {
  ++g_num_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace switchyard {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kGpuStepSeconds = 10e-3;  // the fast end of a GPU decode step

struct Scenario {
  const char* name;
  bool churn;
};

struct Figures {
  double schedule_s = 0, update_s = 0;
  int64_t steps = 0, tokens = 0, new_seqs = 0, allocations = 0;
  SchedulerStats stats;
};

SchedulerOptions BenchOptions() {
  SchedulerOptions options;
  options.block_size = 16;
  options.worker_num_blocks.assign(4, 24576);  // 393k tokens of KV per worker
  options.max_model_len = 8192;
  options.max_num_batched_tokens = 2048;
  options.max_num_seqs = 64;  // x 4 workers = 256 running
  options.max_waiting = 1024;
  return options;
}

class Driver {
 public:
  Driver(bool churn) : churn_(churn), scheduler_(*Scheduler::Create(BenchOptions())) {
    for (int32_t t = 0; t < 256; ++t) system_prompt_.push_back(10000 + t);
  }

  void AddRequest() {
    SchedulerRequest request;
    request.request_id = absl::StrCat("r", next_id_++);
    if (churn_) {
      request.prompt_token_ids = system_prompt_;
      const int64_t own = std::uniform_int_distribution<int64_t>(256, 1024)(rng_);
      for (int64_t i = 0; i < own; ++i) request.prompt_token_ids.push_back(rng_() % 32000);
      request.max_tokens = std::uniform_int_distribution<int64_t>(64, 256)(rng_);
    } else {
      for (int64_t i = 0; i < 512; ++i) request.prompt_token_ids.push_back(rng_() % 32000);
      request.max_tokens = 7000;  // outlives the run: pure decode
    }
    SY_CHECK_OK(scheduler_->Add(std::move(request)).status());
  }

  // One step; times only the scheduler's calls.
  void Step(Figures* figures) {
    outputs_.clear();
    auto start = Clock::now();
    SY_CHECK_OK(scheduler_->Schedule(absl::UnixEpoch(), &plan_, &outputs_));
    auto mid = Clock::now();
    result_.step_id = plan_.step_id;
    result_.tokens.clear();
    for (const WorkerStepPlan& wp : plan_.workers) {
      figures->new_seqs += static_cast<int64_t>(wp.new_sequences.size());
      for (const SequenceWork& w : wp.work) {
        if (w.sample) result_.tokens.push_back({w.seq_id, 1, -0.1f});
      }
    }
    auto mid2 = Clock::now();
    SY_CHECK_OK(scheduler_->Update(result_, &outputs_));
    auto end = Clock::now();
    figures->schedule_s += std::chrono::duration<double>(mid - start).count();
    figures->update_s += std::chrono::duration<double>(end - mid2).count();
    figures->tokens += plan_.num_tokens();
    ++figures->steps;
    for (const RequestOutput& out : outputs_) {
      if (out.finished) AddRequest();  // keep 256 sequences in the system
    }
  }

  Scheduler& scheduler() { return *scheduler_; }

 private:
  bool churn_;
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<int32_t> system_prompt_;
  std::mt19937_64 rng_{42};
  int64_t next_id_ = 0;
  StepPlan plan_;
  StepResult result_;
  std::vector<RequestOutput> outputs_;
};

Figures Run(const Scenario& scenario, int64_t num_steps) {
  Driver driver(scenario.churn);
  for (int i = 0; i < 256; ++i) driver.AddRequest();
  Figures warmup;
  // Until every prompt is in: 256 x 512-1280 tokens over 4 x 2048 tokens per step.
  for (int i = 0; i < 200; ++i) driver.Step(&warmup);
  Figures figures;
  const int64_t allocations_before = g_num_allocations;
  for (int64_t i = 0; i < num_steps; ++i) driver.Step(&figures);
  figures.allocations = g_num_allocations - allocations_before;
  figures.stats = driver.scheduler().GetStats();
  return figures;
}

void Print(const Scenario& scenario, const Figures& f) {
  const double per_step_s = (f.schedule_s + f.update_s) / static_cast<double>(f.steps);
  std::printf(
      "%-7s %6lld steps  running %3lld  waiting %3lld  tokens/step %7.1f  new seqs/step %5.2f\n"
      "        schedule %7.2f us + update %7.2f us = %7.2f us/step  (%9.0f steps/s)\n"
      "        bound: GPU step %.0f ms -> scheduler uses %.4f%% of it; kv usage %.3f, "
      "prefix hits %lld of %lld tokens, preemptions %lld\n"
      "        heap allocations per step %.2f (driver's request churn included)\n",
      scenario.name, static_cast<long long>(f.steps), static_cast<long long>(f.stats.num_running),
      static_cast<long long>(f.stats.num_waiting),
      static_cast<double>(f.tokens) / static_cast<double>(f.steps),
      static_cast<double>(f.new_seqs) / static_cast<double>(f.steps),
      1e6 * f.schedule_s / static_cast<double>(f.steps),
      1e6 * f.update_s / static_cast<double>(f.steps), 1e6 * per_step_s, 1.0 / per_step_s,
      kGpuStepSeconds * 1e3, 100.0 * per_step_s / kGpuStepSeconds, f.stats.kv_usage,
      static_cast<long long>(f.stats.prefix_cache_hit_tokens),
      static_cast<long long>(f.stats.prefix_cache_query_tokens),
      static_cast<long long>(f.stats.num_preemptions),
      static_cast<double>(f.allocations) / static_cast<double>(f.steps));
}

}  // namespace
}  // namespace switchyard

int main(int argc, char** argv) {
  int64_t num_steps = 5000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--steps" && absl::SimpleAtoi(argv[i + 1], &num_steps)) continue;
    std::fprintf(stderr, "usage: %s [--steps N]\n", argv[0]);
    return 2;
  }
  std::printf(
      "bench-scheduler: 4 workers x 64 sequences, block_size 16, budget 2048 tokens/worker\n");
  for (const switchyard::Scenario& s :
       {switchyard::Scenario{"decode", false}, switchyard::Scenario{"churn", true}}) {
    switchyard::Print(s, switchyard::Run(s, num_steps));
  }
  return 0;
}
