// The worker's execution core: one Engine (this rank's expert shard, its KV cache), one Sampler,
// and the sequences this worker hosts. WorkerService (worker/control_service.h) feeds it the
// coordinator's LoadRequest once and a StepRequest every step, on its single engine thread.
//
// A step is applied in the order coordinator/scheduler/step_plan.h gives: drop freed sequences,
// create new ones (block table, cached token ids, sampling), append each work entry's new blocks,
// run every work entry's tokens as one batched Engine::Forward (Engine::ForwardIdle when this
// worker has no tokens, so that the MoE collectives line up across ranks), then sample for each
// entry with `sample` set at position start_position + num_tokens.
//
// Consistency: the worker tracks each sequence's length and checks it against the plan's
// start_position. An inconsistent plan (unknown or duplicate seq id, start_position that does not
// match, blocks missing, ids out of range) is rejected as a whole with INVALID_ARGUMENT before any
// state changes; the worker still runs ForwardIdle so its peers' collectives of that step complete.
// When the forward pass fails (a peer died in an all-to-all), the step's structure (frees, new
// sequences, blocks) stays applied but no token is counted, matching Scheduler::AbortStep (the
// tokens are run again later); the communicator is aborted so every peer fails fast.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "switchyard/v1/control.pb.h"
#include "worker/comm/communicator.h"
#include "worker/engine.h"
#include "worker/ep_moe_executor.h"
#include "worker/moe/placement.h"
#include "worker/sampler.h"

namespace switchyard {

// Builds this rank's data-plane communicator for a LoadRequest (rank, world_size,
// rendezvous_prefix, data_plane, comm_timeout_ms). Called only when world_size > 1.
using CommunicatorFactory =
    std::function<absl::StatusOr<std::unique_ptr<Communicator>>(const v1::LoadRequest& request)>;

struct WorkerRuntimeOptions {
  std::string backend = "cpu";  // "cpu", "cuda" or "auto" (MakeBackend)
  // The worker's own checkpoint directory (--model). When set it wins over
  // LoadRequest.model_dir, since paths may differ between the coordinator's and the worker's host.
  std::filesystem::path model_dir;
  // The worker's own KV-cache budget (--kv_cache_mb); when > 0 it wins over
  // LoadRequest.kv_cache_bytes. Without either, EngineOptions' default.
  int64_t kv_cache_bytes = 0;
  CommunicatorFactory make_communicator;
  // When set, makes the backend instead of MakeBackend(backend) (tests).
  std::function<absl::StatusOr<std::unique_ptr<Backend>>()> make_backend;
};

// Owns the engine, the communicator, the sampler and the per-sequence state.
// Thread safety: Load and ExecuteStep must be called from one thread at a time (the engine
// thread); Abort may be called from any thread.
class WorkerRuntime {
 public:
  explicit WorkerRuntime(WorkerRuntimeOptions options);
  ~WorkerRuntime();

  WorkerRuntime(const WorkerRuntime&) = delete;
  WorkerRuntime& operator=(const WorkerRuntime&) = delete;

  // Loads the rank's shard (ShardLoadPredicate of the request's placements; an empty placement
  // list means contiguous, one entry applies to every MoE layer), allocates the KV cache, joins the
  // data plane and installs expert parallelism. A second Load replaces everything (a new group).
  // INVALID_ARGUMENT for a bad request, NOT_FOUND / FAILED_PRECONDITION from the checkpoint, and
  // the communicator's errors (DEADLINE_EXCEEDED when a peer never joins).
  absl::Status Load(const v1::LoadRequest& request, v1::LoadResponse* response);

  // Applies one step (see the file comment). Blocks in the step's collectives.
  // FAILED_PRECONDITION before Load; INVALID_ARGUMENT for an inconsistent plan (nothing applied);
  // the data plane's error (DEADLINE_EXCEEDED, UNAVAILABLE, ABORTED) when the forward failed.
  absl::Status ExecuteStep(const v1::StepRequest& request, v1::StepResponse* response);

  // Aborts the communicator (if any) so that pending and later collectives fail fast on every
  // rank. Thread-safe.
  void Abort(const std::string& reason);

  bool loaded() const { return engine_ != nullptr; }
  int32_t rank() const { return rank_; }
  int32_t world_size() const { return world_size_; }
  int64_t num_sequences() const { return static_cast<int64_t>(sequences_.size()); }
  // Tokens of sequence `seq_id` whose KV this worker holds; -1 when it holds no such sequence.
  int64_t sequence_length(int64_t seq_id) const {
    auto it = sequences_.find(seq_id);
    return it == sequences_.end() ? -1 : it->second->num_tokens;
  }
  // The expert-parallel executor (per-layer stats of the latest step); null without one.
  const ExpertParallelMoeExecutor* ep() const { return ep_; }
  // The loaded engine (config, block size); null before Load.
  const Engine* engine() const { return engine_.get(); }

 private:
  struct Sequence {
    SamplingParams sampling;
    int64_t num_prompt_tokens = 0;
    int64_t num_tokens = 0;  // tokens whose KV is in the cache (cached + run)
    std::vector<int32_t> block_table;
    TokenCounts counts;
  };

  // The communicator for the request (world_size > 1: the factory's; one CPU worker: a loopback
  // group of one; one device worker: none) with expert parallelism installed in `engine`.
  absl::StatusOr<std::unique_ptr<Communicator>> JoinDataPlane(
      const v1::LoadRequest& request, const std::string& device,
      std::vector<LayerPlacement> placements, Engine& engine);
  absl::Status ValidateStep(const v1::StepRequest& request) const;
  absl::Status ValidateNewSequence(const v1::NewSequence& seq) const;
  absl::Status ValidateWork(const v1::StepRequest& request, const v1::SequenceWork& work,
                            int64_t num_tokens, int64_t num_blocks) const;
  void ApplyStructure(const v1::StepRequest& request);
  absl::Status RunForward(const v1::StepRequest& request, v1::StepStats* stats);
  static bool HasPenalties(const SamplingParams& params);
  // Appends the penalties of `row` (penalty_rows_, penalty_tokens_) from the sequence's history.
  void AddPenaltyRow(int64_t row, const SamplingParams& params, const TokenCounts& counts);
  // One token per sampled work entry (with its logprobs when asked): on the host from the step's
  // logits, or, where Backend::samples_on_device, by SampleOnDevice.
  absl::Status SampleTokens(const v1::StepRequest& request, v1::StepResponse* response);
  // On the device: logprob rows copied raw, penalties applied in place, every row sampled, then
  // the logprobs of the copies; only ids and logprobs come back.
  absl::Status SampleOnDevice(const v1::StepRequest& request, v1::StepResponse* response);
  static void AddTokens(Sequence& seq, std::span<const int32_t> token_ids);
  absl::Status FailDataPlane(int64_t step_id, absl::Status status);

  WorkerRuntimeOptions options_;
  int32_t rank_ = 0;
  int32_t world_size_ = 1;
  // Used by the engine's executor: declared before engine_ so that it outlives it (Load also
  // resets the engine first).
  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<Engine> engine_;
  // What Abort() may reach from another thread while Load replaces comm_.
  absl::Mutex abort_mu_;
  Communicator* abortable_ ABSL_GUARDED_BY(abort_mu_) = nullptr;
  ExpertParallelMoeExecutor* ep_ = nullptr;  // owned by engine_
  std::unique_ptr<Sampler> sampler_;
  absl::flat_hash_map<int64_t, std::unique_ptr<Sequence>> sequences_;

  // Per-step buffers, reused.
  mutable absl::flat_hash_set<int64_t> validate_freed_, validate_worked_;
  mutable absl::flat_hash_map<int64_t, const v1::NewSequence*> validate_created_;
  std::vector<BatchEntry> batch_;
  ForwardOutput forward_output_;
  SampledToken sampled_;
  std::vector<int64_t> device_rows_;
  std::vector<DeviceSamplingRow> device_params_;
  std::vector<int32_t> device_tokens_;
  std::vector<PenaltyRow> penalty_rows_;
  std::vector<PenaltyToken> penalty_tokens_;
  std::vector<int32_t> logprob_rows_;   // logits rows whose sequences want logprobs
  std::vector<int32_t> logprob_of_;     // per sampled entry: its index in logprob_rows_, or -1
  std::vector<int64_t> logprob_index_;  // 0..n-1: rows of raw_logits_
  std::vector<int32_t> logprob_chosen_;
  std::vector<float> chosen_logprobs_, top_logprobs_;
  std::vector<int32_t> top_ids_;
  Tensor raw_logits_;  // the logprob rows before penalties (F32, backend memory), grown as needed
};

// SamplingParams from the coordinator's resolved sampling (has_seed is set: the coordinator has
// already drawn a seed for requests without one).
SamplingParams FromProto(const v1::WorkerSampling& sampling);

}  // namespace switchyard
