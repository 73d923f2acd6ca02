#include "tests/unit/worker/ep_engine_test_util.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "tools/model_maker.h"

namespace switchyard::testing {
namespace {

constexpr int64_t kBlockSize = 4;
constexpr int64_t kBlocksPerSeq = 3;  // 11 tokens at most

// The entries rank `rank` runs in `step` (rank -1: every rank's, in rank order). The spans point
// into `plan`. seq_of receives the sequence index of each entry.
std::vector<BatchEntry> StepBatch(const std::vector<SeqPlan>& plan, int rank, int64_t step,
                                  std::vector<size_t>* seq_of) {
  std::vector<std::pair<int, size_t>> order;  // (rank, seq), so the batch is in rank order
  for (size_t s = 0; s < plan.size(); ++s) {
    const int64_t chunk_idx = step - plan[s].first_step;
    if (chunk_idx < 0 || chunk_idx >= static_cast<int64_t>(plan[s].chunks.size())) continue;
    if (rank >= 0 && plan[s].rank != rank) continue;
    order.emplace_back(plan[s].rank, s);
  }
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<BatchEntry> batch;
  seq_of->clear();
  for (const auto& [owner, s] : order) {
    const SeqPlan& seq = plan[s];
    const int64_t chunk_idx = step - seq.first_step;
    int64_t start = 0;
    for (int64_t c = 0; c < chunk_idx; ++c) start += seq.chunks[c];
    batch.push_back(
        BatchEntry{std::span<const int32_t>(seq.tokens).subspan(start, seq.chunks[chunk_idx]),
                   start, seq.blocks, /*all_logits=*/true});
    seq_of->push_back(s);
  }
  return batch;
}

void AppendLogits(const ForwardOutput& out, const std::vector<BatchEntry>& batch,
                  const std::vector<size_t>& seq_of, SeqLogits* logits) {
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t begin = out.first_row[i] * out.vocab_size;
    const int64_t end = begin + static_cast<int64_t>(batch[i].token_ids.size()) * out.vocab_size;
    std::vector<float>& dst = (*logits)[seq_of[i]];
    dst.insert(dst.end(), out.logits.begin() + begin, out.logits.begin() + end);
  }
}

}  // namespace

// The models this process wrote; removed at exit (forked ranks _Exit and leave them alone). Per
// process, since ctest may run several test processes at once.
struct MadeModels {
  ~MadeModels() {
    std::error_code ignored;
    for (const std::filesystem::path& dir : dirs) std::filesystem::remove_all(dir, ignored);
  }
  absl::Mutex mu;
  std::vector<std::filesystem::path> dirs;
};

std::filesystem::path MakeEpTestModel(const std::string& family) {
  static MadeModels made;
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                                    absl::StrCat("ep_engine_test_", getpid(), "_", family);
  absl::MutexLock lock(&made.mu);
  if (std::find(made.dirs.begin(), made.dirs.end(), dir) == made.dirs.end()) {
    MakeModelOptions options;
    options.family = family;
    options.out_dir = dir;
    options.seed = 5;
    absl::Status status = MakeModel(options);
    EXPECT_TRUE(status.ok()) << status;
    made.dirs.push_back(dir);
  }
  return dir;
}

absl::StatusOr<std::unique_ptr<Engine>> LoadEpTestEngine(
    const std::filesystem::path& dir, std::function<bool(int64_t, int64_t)> load_expert,
    std::unique_ptr<Backend> backend) {
  EngineOptions options;
  options.block_size = kBlockSize;
  options.num_kv_blocks = 64;
  options.weights.load_expert = std::move(load_expert);
  return Engine::Load(dir, backend != nullptr ? std::move(backend) : MakeCpuBackend(), options);
}

std::vector<SeqPlan> MakePlan(int world_size, int64_t vocab_size) {
  std::mt19937 rng(1234 + world_size);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab_size) - 1);
  std::vector<SeqPlan> plan(world_size + 2);
  for (size_t s = 0; s < plan.size(); ++s) {
    SeqPlan& seq = plan[s];
    seq.rank = static_cast<int>(s % world_size);
    // The last rank joins late (idle in the first steps while the others prefill).
    seq.first_step =
        (world_size > 1 && seq.rank == world_size - 1) ? 2 : static_cast<int64_t>(s % 2);
    const int64_t len = 3 + static_cast<int64_t>((5 * s + 2) % 9);
    const int64_t prefill_chunk = 2 + static_cast<int64_t>(s % 4);
    int64_t left = len;
    while (left > 3) {
      const int64_t chunk = std::min(prefill_chunk, left - 3);
      seq.chunks.push_back(chunk);
      left -= chunk;
    }
    if (seq.chunks.empty()) seq.chunks.push_back(1), --left;
    for (; left > 0; --left) seq.chunks.push_back(1);
    seq.tokens.resize(len);
    for (int32_t& id : seq.tokens) id = token(rng);
    for (int64_t b = 0; b < kBlocksPerSeq; ++b) {
      seq.blocks.push_back(static_cast<int32_t>(s * kBlocksPerSeq + kBlocksPerSeq - 1 - b));
    }
  }
  return plan;
}

int64_t NumSteps(const std::vector<SeqPlan>& plan) {
  int64_t steps = 0;
  for (const SeqPlan& seq : plan) {
    steps = std::max(steps, seq.first_step + static_cast<int64_t>(seq.chunks.size()));
  }
  return steps;
}

bool PlanHasIdleRankStep(const std::vector<SeqPlan>& plan, int world_size) {
  std::vector<size_t> seq_of;
  for (int64_t step = 0; step < NumSteps(plan); ++step) {
    int num_busy = 0;
    for (int rank = 0; rank < world_size; ++rank) {
      num_busy += StepBatch(plan, rank, step, &seq_of).empty() ? 0 : 1;
    }
    if (num_busy > 0 && num_busy < world_size) return true;
  }
  return false;
}

absl::StatusOr<SeqLogits> RunPlanSingleProcess(Engine& engine, const std::vector<SeqPlan>& plan) {
  SeqLogits logits(plan.size());
  std::vector<size_t> seq_of;
  for (int64_t step = 0; step < NumSteps(plan); ++step) {
    std::vector<BatchEntry> batch = StepBatch(plan, /*rank=*/-1, step, &seq_of);
    ForwardOutput out;
    SY_RETURN_IF_ERROR(engine.Forward(batch, &out));
    AppendLogits(out, batch, seq_of, &logits);
  }
  return logits;
}

absl::Status RunPlanOnRank(Engine& engine, const std::vector<SeqPlan>& plan, int rank,
                           SeqLogits* logits) {
  std::vector<size_t> seq_of;
  for (int64_t step = 0; step < NumSteps(plan); ++step) {
    std::vector<BatchEntry> batch = StepBatch(plan, rank, step, &seq_of);
    ForwardOutput out;
    absl::Status status = engine.Forward(batch, &out);
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat("rank ", rank, " step ", step, " (", batch.size(),
                                       " entries): ", status.message()));
    }
    if (!batch.empty() && out.first_row.size() != batch.size()) {
      return absl::InternalError(absl::StrCat("rank ", rank, " step ", step, ": ",
                                              out.first_row.size(), " entries in the output, ",
                                              batch.size(), " in the batch"));
    }
    AppendLogits(out, batch, seq_of, logits);
  }
  return absl::OkStatus();
}

absl::Status CompareRankLogits(const std::vector<SeqPlan>& plan, int rank,
                               const SeqLogits& expected, const SeqLogits& actual) {
  for (size_t s = 0; s < plan.size(); ++s) {
    if (plan[s].rank != rank) continue;
    const std::vector<float>& want = expected[s];
    const std::vector<float>& got = actual[s];
    if (want.empty() || want.size() != got.size()) {
      return absl::InternalError(absl::StrCat("rank ", rank, " sequence ", s, ": ", got.size(),
                                              " logits, expected ", want.size()));
    }
    double max_abs = 1.0;
    for (float v : want) max_abs = std::max(max_abs, static_cast<double>(std::abs(v)));
    for (size_t i = 0; i < want.size(); ++i) {
      if (!(std::abs(static_cast<double>(got[i]) - want[i]) <= 1e-4 * max_abs)) {
        return absl::InternalError(absl::StrCat("rank ", rank, " sequence ", s, " logit ", i, ": ",
                                                got[i], ", single process ", want[i]));
      }
    }
  }
  return absl::OkStatus();
}

int64_t ExpertBytes(const ModelConfig& config) {
  return 3 * config.hidden_size * config.moe_intermediate_size *
         static_cast<int64_t>(sizeof(float));
}

}  // namespace switchyard::testing
