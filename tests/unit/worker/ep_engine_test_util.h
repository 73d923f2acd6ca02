// Test helpers for the expert-parallel engine: a deterministic multi-step plan of sequences spread
// over ranks (different lengths, prefill chunks then decodes, ranks idle in some steps), the
// single-process reference run of that plan, one rank's run of its share, and logit comparison.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine.h"

namespace switchyard::testing {

// Writes (once per process and family) a toy checkpoint of `family` under the test temp dir.
std::filesystem::path MakeEpTestModel(const std::string& family);

// Loads an engine with 4-token KV blocks; `load_expert` empty = every expert; `backend` null = a
// CPU backend.
absl::StatusOr<std::unique_ptr<Engine>> LoadEpTestEngine(
    const std::filesystem::path& dir, std::function<bool(int64_t, int64_t)> load_expert = {},
    std::unique_ptr<Backend> backend = nullptr);

// One sequence: its owner rank, tokens, the chunk sizes it runs in (summing to its length), the
// step of its first chunk, and its KV blocks (distinct over all sequences of a plan).
struct SeqPlan {
  int rank = 0;
  std::vector<int32_t> tokens;
  std::vector<int64_t> chunks;
  int64_t first_step = 0;
  std::vector<int32_t> blocks;
};

// A plan for `world_size` ranks: world_size + 2 sequences of 3..11 tokens, run as prefill chunks
// of 2..5 tokens and then single-token decodes, starting at staggered steps; with 2 or more ranks
// some rank is idle in some step while others run (PlanHasIdleRankStep checks it).
std::vector<SeqPlan> MakePlan(int world_size, int64_t vocab_size);
int64_t NumSteps(const std::vector<SeqPlan>& plan);
bool PlanHasIdleRankStep(const std::vector<SeqPlan>& plan, int world_size);

// Logits of every token of every sequence (all_logits), per sequence, in token order.
using SeqLogits = std::vector<std::vector<float>>;

// The single-process reference: each step runs all ranks' entries of that step as one batch.
absl::StatusOr<SeqLogits> RunPlanSingleProcess(Engine& engine, const std::vector<SeqPlan>& plan);

// One rank's share: each step runs the rank's entries, or an empty batch (ForwardIdle) when it has
// none. Fills (*logits)[s] for the rank's sequences s only (logits must have plan.size() entries).
absl::Status RunPlanOnRank(Engine& engine, const std::vector<SeqPlan>& plan, int rank,
                           SeqLogits* logits);

// Compares the rank's sequences within 1e-4 relative to max(1, max |expected|) per sequence.
absl::Status CompareRankLogits(const std::vector<SeqPlan>& plan, int rank,
                               const SeqLogits& expected, const SeqLogits& actual);

// Bytes of one routed expert (gate, up and down projections) in fp32.
int64_t ExpertBytes(const ModelConfig& config);

}  // namespace switchyard::testing
