// WorkerRuntime: two ranks as threads over a loopback communicator, fed hand-made StepRequests
// (prefill chunks, decodes, frees, a sequence that starts on cached blocks, idle ranks). The greedy
// tokens must equal those of a single Engine running each sequence alone with an independent
// argmax; inconsistent plans are rejected without breaking the group; a data-plane abort fails the
// step on every rank.
#include "worker/worker_runtime.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <thread>

#include "gtest/gtest.h"
#include "tests/unit/worker/device_like_backend.h"
#include "tests/unit/worker/ep_engine_test_util.h"
#include "worker/comm/loopback_communicator.h"
#include "worker/step_metrics.h"

namespace switchyard {
namespace {

constexpr int kWorldSize = 2;
constexpr int kBlockSize = 4;

struct Expected {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
};

// Greedy continuation of `prompt` for `num_new` tokens on a fresh engine, one sequence alone, with
// a plain argmax (lowest id on ties) and log_softmax of the raw logits.
Expected GreedyReference(Engine& engine, const std::vector<int32_t>& prompt, int num_new) {
  std::vector<int32_t> blocks;
  for (int32_t b = 0; b < 8; ++b) blocks.push_back(b);
  Expected expected;
  std::vector<int32_t> run = prompt;
  int64_t start = 0;
  for (int i = 0; i < num_new; ++i) {
    std::span<const int32_t> tokens = std::span<const int32_t>(run).subspan(start);
    const BatchEntry entry{tokens, start, blocks, false};
    ForwardOutput out;
    absl::Status status = engine.Forward(std::span<const BatchEntry>(&entry, 1), &out);
    EXPECT_TRUE(status.ok()) << status;
    const float* logits = out.logits.data() + out.first_row[0] * out.vocab_size;
    const int64_t best = std::max_element(logits, logits + out.vocab_size) - logits;
    double sum = 0;
    for (int64_t v = 0; v < out.vocab_size; ++v) sum += std::exp(double(logits[v]) - logits[best]);
    expected.tokens.push_back(static_cast<int32_t>(best));
    expected.logprobs.push_back(static_cast<float>(-std::log(sum)));
    start = static_cast<int64_t>(run.size());
    run.push_back(static_cast<int32_t>(best));
  }
  return expected;
}

v1::WorkerSampling Greedy() {
  v1::WorkerSampling sampling;
  sampling.set_temperature(0.0f);
  sampling.set_top_p(1.0f);
  sampling.set_repetition_penalty(1.0f);
  sampling.set_seed(7);
  sampling.set_num_logprobs(2);
  return sampling;
}

// Builds a StepRequest for one rank with the flat-array layout of control.proto.
class PlanBuilder {
 public:
  explicit PlanBuilder(int64_t step_id) { request_.set_step_id(step_id); }
  PlanBuilder& Free(int64_t seq_id) {
    request_.add_freed_seq_ids(seq_id);
    return *this;
  }
  PlanBuilder& New(int64_t seq_id, int64_t num_prompt_tokens, std::vector<int32_t> cached,
                   std::vector<int32_t> block_table,
                   const v1::WorkerSampling& sampling = Greedy()) {
    v1::NewSequence* seq = request_.add_new_sequences();
    seq->set_seq_id(seq_id);
    seq->set_request_id("req-" + std::to_string(seq_id));
    *seq->mutable_sampling() = sampling;
    seq->set_num_prompt_tokens(num_prompt_tokens);
    seq->mutable_cached_token_ids()->Add(cached.begin(), cached.end());
    seq->mutable_block_table()->Add(block_table.begin(), block_table.end());
    return *this;
  }
  PlanBuilder& Work(int64_t seq_id, int64_t start, std::vector<int32_t> tokens,
                    std::vector<int32_t> new_blocks, bool sample) {
    v1::SequenceWork* work = request_.add_work();
    work->set_seq_id(seq_id);
    work->set_start_position(start);
    work->set_token_offset(request_.token_ids_size());
    work->set_num_tokens(static_cast<int32_t>(tokens.size()));
    work->set_block_offset(request_.block_ids_size());
    work->set_num_new_blocks(static_cast<int32_t>(new_blocks.size()));
    work->set_sample(sample);
    request_.mutable_token_ids()->Add(tokens.begin(), tokens.end());
    request_.mutable_block_ids()->Add(new_blocks.begin(), new_blocks.end());
    return *this;
  }
  const v1::StepRequest& request() const { return request_; }

 private:
  v1::StepRequest request_;
};

class WorkerRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_dir_ = testing::MakeEpTestModel("mixtral");
    MakeRuntimes(/*device_like=*/false);
  }

  // Fresh runtimes (and data plane group); with device_like, each runs on a DeviceLikeBackend
  // (device_backends_[rank] once loaded), so it samples through Backend::SampleTokens and its
  // expert-parallel exchanges are staged through the host.
  void MakeRuntimes(bool device_like) {
    runtimes_.clear();
    sampled_.clear();
    device_backends_.assign(kWorldSize, nullptr);
    group_ = LoopbackGroup::Create(kWorldSize);
    for (int rank = 0; rank < kWorldSize; ++rank) {
      WorkerRuntimeOptions options;
      if (device_like) {
        options.make_backend = [this, rank]() -> absl::StatusOr<std::unique_ptr<Backend>> {
          auto backend = std::make_unique<testing::DeviceLikeBackend>();
          device_backends_[rank] = backend.get();
          return backend;
        };
      }
      options.make_communicator = [group = group_](const v1::LoadRequest& request) {
        CommunicatorOptions comm_options;
        comm_options.timeout = absl::Seconds(20);
        return CreateLoopbackCommunicator(group, static_cast<int>(request.rank()), comm_options);
      };
      runtimes_.push_back(std::make_unique<WorkerRuntime>(options));
    }
  }

  void LoadAll() {
    std::vector<absl::Status> statuses = OnEveryRank([&](int rank) {
      v1::LoadRequest request;
      request.set_rank(rank);
      request.set_world_size(kWorldSize);
      request.set_model_dir(model_dir_.string());
      request.set_block_size(kBlockSize);
      request.set_kv_cache_bytes(4 << 20);
      request.set_data_plane("loopback");
      v1::LoadResponse response;
      absl::Status status = runtimes_[rank]->Load(request, &response);
      if (status.ok() && response.num_kv_blocks() < 16) {
        return absl::InternalError("too few KV blocks for the test");
      }
      return status;
    });
    for (const absl::Status& status : statuses) ASSERT_TRUE(status.ok()) << status;
  }

  std::vector<absl::Status> OnEveryRank(const std::function<absl::Status(int)>& body) {
    std::vector<absl::Status> statuses(kWorldSize);
    std::vector<std::thread> threads;
    for (int rank = 0; rank < kWorldSize; ++rank) {
      threads.emplace_back([&, rank] { statuses[rank] = body(rank); });
    }
    for (std::thread& thread : threads) thread.join();
    return statuses;
  }

  // Runs one step: plans[rank] on each rank at once. Returns each rank's status.
  std::vector<absl::Status> Step(const std::vector<PlanBuilder>& plans) {
    responses_.assign(kWorldSize, {});
    return OnEveryRank([&](int rank) {
      return runtimes_[rank]->ExecuteStep(plans[rank].request(), &responses_[rank]);
    });
  }

  // Runs a step that must succeed on every rank and records the sampled tokens per seq id.
  void StepOk(const std::vector<PlanBuilder>& plans) {
    std::vector<absl::Status> statuses = Step(plans);
    for (int rank = 0; rank < kWorldSize; ++rank) {
      ASSERT_TRUE(statuses[rank].ok()) << "rank " << rank << ": " << statuses[rank];
      for (const v1::SampledToken& token : responses_[rank].tokens()) {
        sampled_[token.seq_id()].push_back(token);
      }
    }
  }

  int32_t Last(int64_t seq_id) { return sampled_[seq_id].back().token_id(); }

  std::filesystem::path model_dir_;
  std::shared_ptr<LoopbackGroup> group_;
  std::vector<std::unique_ptr<WorkerRuntime>> runtimes_;
  std::vector<v1::StepResponse> responses_;
  std::map<int64_t, std::vector<v1::SampledToken>> sampled_;
  std::vector<testing::DeviceLikeBackend*> device_backends_;  // owned by the runtimes' engines
};

TEST_F(WorkerRuntimeTest, GreedyTokensMatchTheSingleEngine) {
  LoadAll();
  const int64_t vocab_size = 64;  // the toy models' vocabularies are larger; ids stay in range
  std::vector<int32_t> prompt_a = {3, 14, 15, 9, 26, 5, 35};
  std::vector<int32_t> prompt_b = {27, 18, 28, 1, 8};
  // C shares A's first block (4 tokens) and reuses its KV as a prefix-cache hit.
  std::vector<int32_t> prompt_c = {3, 14, 15, 9, 62, 11, 40};
  for (int32_t t : prompt_c) ASSERT_LT(t, vocab_size);
  auto slice = [](const std::vector<int32_t>& v, size_t begin, size_t end) {
    return std::vector<int32_t>(v.begin() + begin, v.begin() + end);
  };
  constexpr int64_t kA = 1, kB = 2, kC = 3;

  // Step 0: A's first prefill chunk on rank 0; rank 1 idle.
  StepOk({PlanBuilder(0).New(kA, 7, {}, {0}).Work(kA, 0, slice(prompt_a, 0, 4), {}, false),
          PlanBuilder(0)});
  // Step 1: A's last chunk (new block) samples; B's whole prompt on rank 1.
  StepOk({PlanBuilder(1).Work(kA, 4, slice(prompt_a, 4, 7), {1}, true),
          PlanBuilder(1).New(kB, 5, {}, {0, 1}).Work(kB, 0, prompt_b, {}, true)});
  // Step 2: A and B decode; C starts on A's cached block 0 with its own block 5.
  StepOk({PlanBuilder(2)
              .Work(kA, 7, {Last(kA)}, {}, true)
              .New(kC, 7, slice(prompt_c, 0, 4), {0, 5})
              .Work(kC, 4, slice(prompt_c, 4, 7), {}, true),
          PlanBuilder(2).Work(kB, 5, {Last(kB)}, {}, true)});
  // Step 3: everyone decodes; A and C cross a block boundary.
  StepOk({PlanBuilder(3).Work(kA, 8, {Last(kA)}, {2}, true).Work(kC, 7, {Last(kC)}, {}, true),
          PlanBuilder(3).Work(kB, 6, {Last(kB)}, {}, true)});
  // Step 4: B is freed, rank 1 idles while rank 0 decodes.
  StepOk({PlanBuilder(4).Work(kA, 9, {Last(kA)}, {}, true).Work(kC, 8, {Last(kC)}, {6}, true),
          PlanBuilder(4).Free(kB)});
  // Step 5: A is freed; C goes on.
  StepOk({PlanBuilder(5).Free(kA).Work(kC, 9, {Last(kC)}, {}, true), PlanBuilder(5)});
  EXPECT_EQ(runtimes_[0]->num_sequences(), 1);
  EXPECT_EQ(runtimes_[1]->num_sequences(), 0);

  auto reference = testing::LoadEpTestEngine(model_dir_);
  ASSERT_TRUE(reference.ok()) << reference.status();
  const std::map<int64_t, Expected> expected = {{kA, GreedyReference(**reference, prompt_a, 4)},
                                                {kB, GreedyReference(**reference, prompt_b, 3)},
                                                {kC, GreedyReference(**reference, prompt_c, 4)}};
  for (const auto& [seq_id, want] : expected) {
    const std::vector<v1::SampledToken>& got = sampled_[seq_id];
    ASSERT_EQ(got.size(), want.tokens.size()) << "seq " << seq_id;
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].token_id(), want.tokens[i]) << "seq " << seq_id << " token " << i;
      EXPECT_NEAR(got[i].logprob(), want.logprobs[i], 1e-3) << "seq " << seq_id << " token " << i;
      ASSERT_EQ(got[i].top_token_ids_size(), 2);
      EXPECT_EQ(got[i].top_token_ids(0), want.tokens[i]);
      EXPECT_GE(got[i].top_logprobs(0), got[i].top_logprobs(1));
    }
  }
}

TEST_F(WorkerRuntimeTest, StepStatsCountTokensAndRoutedRows) {
  LoadAll();
  StepOk({PlanBuilder(0).New(1, 3, {}, {0}).Work(1, 0, {1, 2, 3}, {}, true),
          PlanBuilder(0).New(2, 2, {}, {0}).Work(2, 0, {4, 5}, {}, true)});
  const v1::StepStats& s0 = responses_[0].stats();
  const v1::StepStats& s1 = responses_[1].stats();
  EXPECT_EQ(s0.num_tokens(), 3u);
  EXPECT_EQ(s1.num_tokens(), 2u);
  // Every token row goes to top_k experts in every MoE layer, computed on one rank or the other.
  auto config = LoadModelConfig(model_dir_);
  ASSERT_TRUE(config.ok());
  const uint64_t rows = 5ull * config->num_experts_per_tok * MoeLayerIndices(*config).size();
  EXPECT_EQ(s0.rows_routed() + s1.rows_routed(), rows);
}

// Sums the counter values of one family in a registry's collection.
double CounterSum(prometheus::Registry& registry, const std::string& name) {
  double sum = 0;
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) sum += metric.counter.value;
  }
  return sum;
}

TEST_F(WorkerRuntimeTest, StepMetricsAddUpToTheRoutedRows) {
  LoadAll();
  std::vector<std::shared_ptr<prometheus::Registry>> registries;
  std::vector<std::unique_ptr<metrics::WorkerMetrics>> worker_metrics;
  std::vector<StepMetricsRecorder> recorders;
  for (int rank = 0; rank < kWorldSize; ++rank) {
    registries.push_back(std::make_shared<prometheus::Registry>());
    worker_metrics.push_back(std::make_unique<metrics::WorkerMetrics>(
        *registries[rank], "toy", rank, "cpu", /*per_expert_metrics=*/true));
    recorders.emplace_back(worker_metrics[rank].get());
  }
  StepOk({PlanBuilder(0).New(1, 3, {}, {0}).Work(1, 0, {1, 2, 3}, {}, true),
          PlanBuilder(0).New(2, 2, {}, {0}).Work(2, 0, {4, 5}, {}, true)});
  for (int rank = 0; rank < kWorldSize; ++rank) {
    recorders[rank].RecordStep(*runtimes_[rank], responses_[rank], 0.01);
  }
  StepOk({PlanBuilder(1).Work(1, 3, {Last(1)}, {}, true), PlanBuilder(1)});
  for (int rank = 0; rank < kWorldSize; ++rank) {
    recorders[rank].RecordStep(*runtimes_[rank], responses_[rank], 0.01);
  }
  auto config = LoadModelConfig(model_dir_);
  ASSERT_TRUE(config.ok());
  const double rows = 6.0 * config->num_experts_per_tok * MoeLayerIndices(*config).size();
  double rank_rows = 0, expert_rows = 0;
  for (int rank = 0; rank < kWorldSize; ++rank) {
    rank_rows += CounterSum(*registries[rank], "switchyard_moe_rank_tokens_total");
    expert_rows += CounterSum(*registries[rank], "switchyard_moe_expert_tokens_total");
  }
  EXPECT_EQ(rank_rows, rows);
  EXPECT_EQ(expert_rows, rows);
}

TEST_F(WorkerRuntimeTest, InconsistentPlansAreRejectedAndTheGroupStaysInStep) {
  v1::StepResponse response;
  EXPECT_EQ(runtimes_[0]->ExecuteStep(PlanBuilder(0).request(), &response).code(),
            absl::StatusCode::kFailedPrecondition);
  LoadAll();
  const std::vector<PlanBuilder> bad_plans = {
      PlanBuilder(1).Work(42, 0, {1, 2}, {}, true),                             // unknown sequence
      PlanBuilder(1).New(7, 9, {}, {0}).Work(7, 0, {1, 2, 3, 4, 5}, {}, true),  // blocks missing
      PlanBuilder(1).New(7, 2, {}, {0}).Work(7, 1, {1, 2}, {}, true),        // wrong start_position
      PlanBuilder(1).New(7, 2, {}, {0}).Work(7, 0, {1, 1 << 30}, {}, true),  // token out of vocab
      PlanBuilder(1).New(7, 2, {}, {1 << 20}).Work(7, 0, {1, 2}, {}, true),  // block out of range
  };
  int64_t next_seq = 100;
  for (size_t i = 0; i < bad_plans.size(); ++i) {
    // Rank 1 runs a valid step alongside, so its collectives need rank 0's idle forward.
    const int64_t seq_id = next_seq++;
    std::vector<absl::Status> statuses = Step(
        {bad_plans[i], PlanBuilder(1).New(seq_id, 2, {}, {0}).Work(seq_id, 0, {1, 2}, {}, true)});
    EXPECT_EQ(statuses[0].code(), absl::StatusCode::kInvalidArgument)
        << "plan " << i << ": " << statuses[0];
    EXPECT_FALSE(statuses[0].message().empty());
    EXPECT_TRUE(statuses[1].ok()) << "plan " << i << ": " << statuses[1];
    EXPECT_EQ(runtimes_[0]->num_sequences(), 0) << "plan " << i << " was partly applied";
    StepOk({PlanBuilder(2), PlanBuilder(2).Free(seq_id)});
  }
  // A new sequence that already exists is rejected too.
  StepOk({PlanBuilder(3).New(1, 2, {}, {0}).Work(1, 0, {1, 2}, {}, true), PlanBuilder(3)});
  EXPECT_EQ(Step({PlanBuilder(4).New(1, 2, {}, {1}), PlanBuilder(4)})[0].code(),
            absl::StatusCode::kInvalidArgument);
  // ... unless the same plan frees it first (a requeued sequence is rebuilt).
  StepOk({PlanBuilder(5).Free(1).New(1, 2, {}, {1}).Work(1, 0, {1, 2}, {}, true), PlanBuilder(5)});
}

// The penalties count positions >= num_prompt_tokens as output even when a preempted sequence is
// rebuilt with its outputs run as one chunk, so it continues with the token it would have sampled.
// Seeded random sampling: the draw depends on the whole penalised distribution, so a token counted
// as prompt instead of output changes the outcome.
TEST_F(WorkerRuntimeTest, RecomputedSequenceKeepsItsPenaltiesAndSampledTokens) {
  LoadAll();
  v1::WorkerSampling sampling = Greedy();
  sampling.set_temperature(1.0f);
  sampling.set_frequency_penalty(2.0f);
  sampling.set_presence_penalty(2.0f);
  const std::vector<int32_t> prompt = {5, 6, 7, 5, 6};
  StepOk({PlanBuilder(0).New(1, 5, {}, {0, 1, 2}, sampling).Work(1, 0, prompt, {}, true),
          PlanBuilder(0)});
  std::vector<int32_t> history = prompt;
  for (int64_t step = 1; step <= 6; ++step) {
    history.push_back(Last(1));
    StepOk(
        {PlanBuilder(step).Work(1, static_cast<int64_t>(history.size()) - 1, {Last(1)}, {}, true),
         PlanBuilder(step)});
  }
  const v1::SampledToken continued = sampled_[1].back();
  // Preempted and rebuilt on other blocks: prompt and the six outputs run as one chunk.
  StepOk({PlanBuilder(7).Free(1).New(1, 5, {}, {3, 4, 5}, sampling).Work(1, 0, history, {}, true),
          PlanBuilder(7)});
  EXPECT_EQ(sampled_[1].back().token_id(), continued.token_id());
  EXPECT_NEAR(sampled_[1].back().logprob(), continued.logprob(), 1e-4);
}

TEST_F(WorkerRuntimeTest, DataPlaneAbortFailsTheStepOnEveryRank) {
  LoadAll();
  runtimes_[1]->Abort("test: peer lost");
  std::vector<absl::Status> statuses =
      Step({PlanBuilder(0).New(1, 2, {}, {0}).Work(1, 0, {1, 2}, {}, true), PlanBuilder(0)});
  for (int rank = 0; rank < kWorldSize; ++rank) {
    EXPECT_FALSE(statuses[rank].ok()) << "rank " << rank;
    EXPECT_TRUE(IsPeerFailure(statuses[rank])) << "rank " << rank << ": " << statuses[rank];
  }
  // The failed step's structure stands (Scheduler::AbortStep) and its tokens were not counted, so
  // a rerun would start at position 0 again...
  EXPECT_EQ(runtimes_[0]->num_sequences(), 1);
  EXPECT_EQ(runtimes_[0]->sequence_length(1), 0);
  // ...and on the broken group it fails fast, never hangs.
  statuses = Step({PlanBuilder(1).Work(1, 0, {1, 2}, {}, true), PlanBuilder(1)});
  EXPECT_TRUE(IsPeerFailure(statuses[0])) << statuses[0];
}

}  // namespace
}  // namespace switchyard

namespace switchyard {
namespace {

v1::WorkerSampling Seeded(uint64_t seed) {
  v1::WorkerSampling sampling;
  sampling.set_temperature(0.9f);
  sampling.set_top_p(0.95f);
  sampling.set_top_k(12);
  sampling.set_min_p(0.01f);
  sampling.set_repetition_penalty(1.0f);
  sampling.set_seed(seed);
  return sampling;
}

// A backend that samples on its device picks the host sampler's tokens for greedy, seeded and
// penalised sequences, and reports the same logprobs (of the raw logits).
TEST_F(WorkerRuntimeTest, DeviceSamplingPicksTheHostSamplersTokens) {
  v1::WorkerSampling greedy = Greedy();
  greedy.set_num_logprobs(0);
  v1::WorkerSampling penalised = Seeded(5);
  penalised.set_repetition_penalty(1.3f);
  penalised.set_frequency_penalty(0.5f);
  v1::WorkerSampling with_logprobs = Seeded(9);
  with_logprobs.set_num_logprobs(2);
  with_logprobs.set_presence_penalty(0.7f);  // logprobs stay those of the raw logits
  // seq -> (rank, prompt, sampling); 4 has penalties, 5 asks for logprobs as well.
  struct Seq {
    int rank;
    std::vector<int32_t> prompt;
    v1::WorkerSampling sampling;
  };
  const std::map<int64_t, Seq> seqs = {{1, {0, {3, 14, 15, 9, 26}, Seeded(11)}},
                                       {2, {1, {27, 18, 28}, greedy}},
                                       {3, {0, {5, 6, 7}, Seeded(12)}},
                                       {4, {1, {8, 9, 10, 11}, penalised}},
                                       {5, {1, {40, 41}, with_logprobs}}};
  // The tokens (and the first logprob of seq 5) per sequence: a prefill step, 4 decode steps.
  auto run = [&](bool device_like) {
    MakeRuntimes(device_like);
    LoadAll();
    std::vector<PlanBuilder> prefill = {PlanBuilder(0), PlanBuilder(0)};
    for (const auto& [id, seq] : seqs) {
      const int32_t first_block = static_cast<int32_t>(id * 4);
      prefill[seq.rank]
          .New(id, static_cast<int64_t>(seq.prompt.size()), {},
               {first_block, first_block + 1, first_block + 2, first_block + 3}, seq.sampling)
          .Work(id, 0, seq.prompt, {}, true);
    }
    StepOk(prefill);
    for (int64_t step = 1; step <= 4; ++step) {
      std::vector<PlanBuilder> plans = {PlanBuilder(step), PlanBuilder(step)};
      for (const auto& [id, seq] : seqs) {
        plans[seq.rank].Work(id, static_cast<int64_t>(seq.prompt.size()) + step - 1, {Last(id)},
                             {}, true);
      }
      StepOk(plans);
    }
    std::map<int64_t, std::vector<int32_t>> tokens;
    for (const auto& [id, got] : sampled_) {
      for (const v1::SampledToken& token : got) tokens[id].push_back(token.token_id());
    }
    return std::make_pair(tokens, sampled_[5]);
  };

  const auto [host, host_logprobs] = run(false);
  const auto [device, device_logprobs] = run(true);
  ASSERT_EQ(host.size(), seqs.size());
  EXPECT_EQ(device, host);
  // Everything is sampled on the device: 4 with its penalties applied there, 5 with its logprobs
  // computed there from the raw logits.
  ASSERT_NE(device_backends_[0], nullptr);
  ASSERT_NE(device_backends_[1], nullptr);
  EXPECT_EQ(device_backends_[0]->num_rows_sampled(), 2 * 5);
  EXPECT_EQ(device_backends_[1]->num_rows_sampled(), 3 * 5);
  EXPECT_EQ(device_backends_[0]->num_rows_penalized(), 0);
  EXPECT_EQ(device_backends_[1]->num_rows_penalized(), 2 * 5);  // 4 and 5
  EXPECT_EQ(device_backends_[1]->num_rows_with_logprobs(), 1 * 5);
  for (const testing::DeviceLikeBackend* backend : device_backends_) {
    EXPECT_EQ(backend->num_tensor_bytes_to_host(), 0);  // no logits row came back
    EXPECT_GT(backend->num_bytes_to_host(), 0);         // the Gloo-like exchanges were staged
  }
  // Every step of 5, the later ones after presence penalties changed its output tokens' logits.
  ASSERT_EQ(device_logprobs.size(), 5u);
  ASSERT_EQ(host_logprobs.size(), 5u);
  for (size_t step = 0; step < 5; ++step) {
    const v1::SampledToken& got = device_logprobs[step];
    const v1::SampledToken& want = host_logprobs[step];
    EXPECT_LT(got.logprob(), 0.0f) << "step " << step;
    EXPECT_FLOAT_EQ(got.logprob(), want.logprob()) << "step " << step;
    ASSERT_EQ(got.top_token_ids_size(), 2) << "step " << step;
    ASSERT_EQ(want.top_token_ids_size(), 2) << "step " << step;
    for (int j = 0; j < 2; ++j) {
      EXPECT_EQ(got.top_token_ids(j), want.top_token_ids(j)) << "step " << step;
      EXPECT_FLOAT_EQ(got.top_logprobs(j), want.top_logprobs(j)) << "step " << step;
    }
  }
}

}  // namespace
}  // namespace switchyard
