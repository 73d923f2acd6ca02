#include "worker/worker_runtime.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "worker/backend/backend.h"
#include "worker/comm/loopback_communicator.h"
#include "worker/moe/placement.h"

namespace switchyard {
namespace {

// The placements of a LoadRequest, one per MoE layer.
absl::StatusOr<std::vector<LayerPlacement>> PlacementsOf(const v1::LoadRequest& request,
                                                         const ModelConfig& config) {
  const int32_t world_size = static_cast<int32_t>(request.world_size());
  if (request.layer_placements().empty()) return ContiguousPlacements(config, world_size);
  const size_t num_moe_layers = MoeLayerIndices(config).size();
  std::vector<LayerPlacement> placements;
  for (int i = 0; i < request.layer_placements_size(); ++i) {
    auto placement = LayerPlacement::FromString(request.layer_placements(i));
    if (!placement.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("LoadRequest.layer_placements[", i, "]: ", placement.status().message()));
    }
    placements.push_back(*std::move(placement));
  }
  if (placements.size() == 1) placements.resize(num_moe_layers, placements.front());
  SY_RETURN_IF_ERROR(ValidatePlacements(config, placements, world_size));
  return placements;
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

SamplingParams FromProto(const v1::WorkerSampling& sampling) {
  SamplingParams params;
  params.temperature = sampling.temperature();
  params.top_p = sampling.top_p();
  params.top_k = sampling.top_k();
  params.min_p = sampling.min_p();
  params.repetition_penalty = sampling.repetition_penalty();
  params.presence_penalty = sampling.presence_penalty();
  params.frequency_penalty = sampling.frequency_penalty();
  params.seed = sampling.seed();
  params.has_seed = true;
  params.num_logprobs = sampling.num_logprobs();
  return params;
}

WorkerRuntime::WorkerRuntime(WorkerRuntimeOptions options) : options_(std::move(options)) {}

WorkerRuntime::~WorkerRuntime() {
  {
    absl::MutexLock lock(&abort_mu_);
    abortable_ = nullptr;
  }
  engine_.reset();  // its executor refers to comm_
  comm_.reset();
}

void WorkerRuntime::Abort(const std::string& reason) {
  absl::MutexLock lock(&abort_mu_);
  if (abortable_ != nullptr) abortable_->Abort(reason);
}

absl::Status WorkerRuntime::Load(const v1::LoadRequest& request, v1::LoadResponse* response) {
  if (request.world_size() == 0 || request.rank() >= request.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("LoadRequest: rank ", request.rank(),
                                                   " must be < world_size ", request.world_size(),
                                                   " and world_size >= 1"));
  }
  if (request.block_size() == 0) {
    return absl::InvalidArgumentError("LoadRequest: block_size must be positive, got 0");
  }
  // Drop the previous generation first: its executor refers to its communicator.
  Abort("worker reloading");
  {
    absl::MutexLock lock(&abort_mu_);
    abortable_ = nullptr;
  }
  engine_.reset();
  ep_ = nullptr;
  comm_.reset();
  sampler_.reset();
  sequences_.clear();
  rank_ = static_cast<int32_t>(request.rank());
  world_size_ = static_cast<int32_t>(request.world_size());

  const std::filesystem::path model_dir =
      options_.model_dir.empty() ? std::filesystem::path(request.model_dir()) : options_.model_dir;
  SY_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  SY_ASSIGN_OR_RETURN(std::vector<LayerPlacement> placements, PlacementsOf(request, config));
  EngineOptions engine_options;
  engine_options.block_size = request.block_size();
  if (options_.kv_cache_bytes > 0) {
    engine_options.kv_cache_bytes = options_.kv_cache_bytes;
  } else if (request.kv_cache_bytes() > 0) {
    engine_options.kv_cache_bytes = static_cast<int64_t>(request.kv_cache_bytes());
  }
  engine_options.weights.load_expert = ShardLoadPredicate(config, placements, rank_);
  SY_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, options_.make_backend
                                                            ? options_.make_backend()
                                                            : MakeBackend(options_.backend));
  const std::string device(backend->name());
  SY_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                      Engine::Load(model_dir, std::move(backend), engine_options));

  SY_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm,
                      JoinDataPlane(request, device, std::move(placements), *engine));
  comm_ = std::move(comm);
  engine_ = std::move(engine);
  {
    absl::MutexLock lock(&abort_mu_);
    abortable_ = comm_.get();
  }
  sampler_ = std::make_unique<Sampler>(engine_->config().vocab_size);
  response->set_num_kv_blocks(static_cast<uint64_t>(engine_->num_kv_blocks()));
  response->set_weight_bytes_loaded(engine_->weight_bytes_loaded());
  response->set_device(device);
  SY_LOG_INFO("loaded rank {}/{} from {}: {} KV blocks of {} tokens, {} weight bytes on {}", rank_,
              world_size_, model_dir.string(), engine_->num_kv_blocks(), engine_->block_size(),
              engine_->weight_bytes_loaded(), device);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Communicator>> WorkerRuntime::JoinDataPlane(
    const v1::LoadRequest& request, const std::string& device,
    std::vector<LayerPlacement> placements, Engine& engine) {
  std::unique_ptr<Communicator> comm;
  if (world_size_ > 1) {
    if (!options_.make_communicator) {
      return absl::FailedPreconditionError("worker has no communicator factory for world_size > 1");
    }
    SY_ASSIGN_OR_RETURN(comm, options_.make_communicator(request));
  } else if (device == "cpu") {
    // A group of one keeps the expert-parallel path (and its stats) with a single worker.
    SY_ASSIGN_OR_RETURN(comm, CreateLoopbackCommunicator(LoopbackGroup::Create(1), 0));
  } else {
    return comm;  // one device worker: the engine's local executor computes every expert
  }
  auto ep = InstallExpertParallel(engine, *comm, std::move(placements));
  if (!ep.ok()) {
    comm->Abort(absl::StrCat("rank ", rank_, " failed to install expert parallelism"));
    return ep.status();
  }
  ep_ = *ep;
  return comm;
}

absl::Status WorkerRuntime::ExecuteStep(const v1::StepRequest& request,
                                        v1::StepResponse* response) {
  if (!loaded()) {
    return absl::FailedPreconditionError(
        absl::StrCat("step ", request.step_id(), ": worker not loaded (no Load yet)"));
  }
  response->Clear();
  response->set_step_id(request.step_id());
  if (absl::Status invalid = ValidateStep(request); !invalid.ok()) {
    // Keep the group in lockstep: the peers are running this step's collectives.
    absl::Status idle = engine_->ForwardIdle();
    if (!idle.ok()) return FailDataPlane(request.step_id(), idle);
    return invalid;
  }
  ApplyStructure(request);
  SY_RETURN_IF_ERROR(RunForward(request, response->mutable_stats()));
  return SampleTokens(request, response);
}

absl::Status WorkerRuntime::ValidateStep(const v1::StepRequest& request) const {
  // Messages are built only on failure: a valid plan allocates nothing here after warm-up.
  auto fail = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("step ", request.step_id(), " rank ", rank_, ": ", parts...));
  };
  // The sequences live after the frees and creations, with their lengths and block counts.
  absl::flat_hash_set<int64_t>& freed = validate_freed_;
  absl::flat_hash_map<int64_t, const v1::NewSequence*>& created = validate_created_;
  absl::flat_hash_set<int64_t>& worked = validate_worked_;
  freed.clear();
  created.clear();
  worked.clear();
  freed.insert(request.freed_seq_ids().begin(), request.freed_seq_ids().end());
  for (const v1::NewSequence& seq : request.new_sequences()) {
    const bool live = sequences_.contains(seq.seq_id()) && !freed.contains(seq.seq_id());
    if (live || !created.emplace(seq.seq_id(), &seq).second) {
      return fail("new sequence ", seq.seq_id(), " already exists on this worker");
    }
    absl::Status status = ValidateNewSequence(seq);
    if (!status.ok()) return fail(status.message());
  }
  for (const v1::SequenceWork& work : request.work()) {
    if (!worked.insert(work.seq_id()).second) {
      return fail("sequence ", work.seq_id(), " has two work entries");
    }
    int64_t num_tokens = 0, num_blocks = 0;
    if (auto it = created.find(work.seq_id()); it != created.end()) {
      num_tokens = it->second->cached_token_ids_size();
      num_blocks = it->second->block_table_size();
    } else if (auto it = sequences_.find(work.seq_id());
               it != sequences_.end() && !freed.contains(work.seq_id())) {
      num_tokens = it->second->num_tokens;
      num_blocks = static_cast<int64_t>(it->second->block_table.size());
    } else {
      return fail("work for sequence ", work.seq_id(), ", which this worker does not hold");
    }
    absl::Status status = ValidateWork(request, work, num_tokens, num_blocks);
    if (!status.ok()) return fail(status.message());
  }
  return absl::OkStatus();
}

absl::Status WorkerRuntime::ValidateNewSequence(const v1::NewSequence& seq) const {
  auto fail = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("new sequence ", seq.seq_id(), ": ", parts...));
  };
  absl::Status sampling =
      ValidateSamplingParams(FromProto(seq.sampling()), engine_->config().vocab_size);
  if (!sampling.ok()) return fail(sampling.message());
  if (seq.num_prompt_tokens() < 0) {
    return fail("num_prompt_tokens ", seq.num_prompt_tokens(), " is negative");
  }
  const int64_t capacity = static_cast<int64_t>(seq.block_table_size()) * engine_->block_size();
  if (seq.cached_token_ids_size() > capacity) {
    return fail(seq.cached_token_ids_size(), " cached tokens but the block table holds ",
                capacity);
  }
  for (int32_t block : seq.block_table()) {
    if (block < 0 || block >= engine_->num_kv_blocks()) {
      return fail("block ", block, " out of range [0, ", engine_->num_kv_blocks(), ")");
    }
  }
  return absl::OkStatus();
}

absl::Status WorkerRuntime::ValidateWork(const v1::StepRequest& request,
                                         const v1::SequenceWork& work, int64_t num_tokens,
                                         int64_t num_blocks) const {
  auto fail = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("work of sequence ", work.seq_id(), ": ", parts...));
  };
  if (work.start_position() != num_tokens) {
    return fail("start_position ", work.start_position(), ", but the worker holds ", num_tokens,
                " tokens of it");
  }
  if (work.num_tokens() < 1 || work.token_offset() < 0 ||
      work.token_offset() + work.num_tokens() > request.token_ids_size()) {
    return fail("tokens [", work.token_offset(), ", +", work.num_tokens(),
                ") must be non-empty and within token_ids (", request.token_ids_size(), ")");
  }
  if (work.num_new_blocks() < 0 || work.block_offset() < 0 ||
      work.block_offset() + work.num_new_blocks() > request.block_ids_size()) {
    return fail("new blocks [", work.block_offset(), ", +", work.num_new_blocks(),
                ") not within block_ids (", request.block_ids_size(), ")");
  }
  const int64_t vocab_size = engine_->config().vocab_size;
  for (int i = 0; i < work.num_tokens(); ++i) {
    const int32_t token = request.token_ids(work.token_offset() + i);
    if (token < 0 || token >= vocab_size) {
      return fail("token id ", token, " out of the vocabulary [0, ", vocab_size, ")");
    }
  }
  for (int i = 0; i < work.num_new_blocks(); ++i) {
    const int32_t block = request.block_ids(work.block_offset() + i);
    if (block < 0 || block >= engine_->num_kv_blocks()) {
      return fail("block ", block, " out of range [0, ", engine_->num_kv_blocks(), ")");
    }
  }
  const int64_t needed_tokens = work.start_position() + work.num_tokens();
  const int64_t capacity = (num_blocks + work.num_new_blocks()) * engine_->block_size();
  if (capacity < needed_tokens) {
    return fail("blocks missing: positions up to ", needed_tokens, " need ", needed_tokens,
                " KV slots, its blocks hold ", capacity);
  }
  return absl::OkStatus();
}

void WorkerRuntime::AddTokens(Sequence& seq, std::span<const int32_t> token_ids) {
  for (int32_t token : token_ids) {
    if (seq.num_tokens < seq.num_prompt_tokens) {
      seq.counts.AddPromptTokens(std::span<const int32_t>(&token, 1));
    } else {
      seq.counts.AddOutputToken(token);
    }
    ++seq.num_tokens;
  }
}

void WorkerRuntime::ApplyStructure(const v1::StepRequest& request) {
  for (int64_t seq_id : request.freed_seq_ids()) {
    if (sequences_.erase(seq_id) == 0) {
      SY_LOG_DEBUG("step={} freed sequence {} was not on this worker", request.step_id(), seq_id);
    }
  }
  for (const v1::NewSequence& proto : request.new_sequences()) {
    auto seq = std::make_unique<Sequence>();
    seq->sampling = FromProto(proto.sampling());
    seq->num_prompt_tokens = proto.num_prompt_tokens();
    seq->block_table.assign(proto.block_table().begin(), proto.block_table().end());
    AddTokens(*seq, std::span<const int32_t>(proto.cached_token_ids().data(),
                                             proto.cached_token_ids_size()));
    SY_LOG_DEBUG("step={} req={} seq={} created with {} cached tokens, {} blocks",
                 request.step_id(), proto.request_id(), proto.seq_id(), seq->num_tokens,
                 seq->block_table.size());
    sequences_[proto.seq_id()] = std::move(seq);
  }
  for (const v1::SequenceWork& work : request.work()) {
    Sequence& seq = *sequences_.at(work.seq_id());
    const auto* blocks = request.block_ids().data() + work.block_offset();
    seq.block_table.insert(seq.block_table.end(), blocks, blocks + work.num_new_blocks());
  }
}

absl::Status WorkerRuntime::RunForward(const v1::StepRequest& request, v1::StepStats* stats) {
  const ExpertParallelTotals before = ep_ ? ep_->totals() : ExpertParallelTotals{};
  batch_.clear();
  for (const v1::SequenceWork& work : request.work()) {
    const Sequence& seq = *sequences_.at(work.seq_id());
    batch_.push_back(
        BatchEntry{std::span<const int32_t>(request.token_ids().data() + work.token_offset(),
                                            work.num_tokens()),
                   work.start_position(), seq.block_table, /*all_logits=*/false});
  }
  const absl::Time start = absl::Now();
  absl::Status status =
      batch_.empty()
          ? engine_->ForwardIdle()
          : engine_->Forward(batch_, &forward_output_,
                             ForwardOptions{.logits_to_host =
                                                !engine_->backend().samples_on_device()});
  if (!status.ok()) return FailDataPlane(request.step_id(), std::move(status));
  stats->set_forward_seconds(Seconds(absl::Now() - start));
  stats->set_num_tokens(static_cast<uint64_t>(request.token_ids_size()));
  if (ep_ != nullptr) {
    const ExpertParallelTotals& after = ep_->totals();
    stats->set_rows_routed(static_cast<uint64_t>(after.rows_received - before.rows_received));
    stats->set_dispatch_seconds(Seconds(after.dispatch_time - before.dispatch_time));
    stats->set_combine_seconds(Seconds(after.combine_time - before.combine_time));
    stats->set_dispatch_bytes(static_cast<uint64_t>(after.bytes_sent - before.bytes_sent));
    // The combine sends back exactly the rows this rank received for its experts.
    stats->set_combine_bytes(static_cast<uint64_t>(after.bytes_received - before.bytes_received));
  }
  for (const v1::SequenceWork& work : request.work()) {
    AddTokens(*sequences_.at(work.seq_id()),
              std::span<const int32_t>(request.token_ids().data() + work.token_offset(),
                                       work.num_tokens()));
  }
  return absl::OkStatus();
}

bool WorkerRuntime::HasPenalties(const SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
}

void WorkerRuntime::AddPenaltyRow(int64_t row, const SamplingParams& p, const TokenCounts& counts) {
  PenaltyRow& penalty = penalty_rows_.emplace_back();
  penalty.row = row;
  penalty.repetition = p.repetition_penalty;
  penalty.frequency = p.frequency_penalty;
  penalty.presence = p.presence_penalty;
  penalty.first_token = static_cast<int32_t>(penalty_tokens_.size());
  counts.ForEachDistinctToken([this](int32_t token_id, int32_t output_count) {
    penalty_tokens_.push_back(PenaltyToken{token_id, output_count});
  });
  penalty.num_tokens = static_cast<int32_t>(penalty_tokens_.size()) - penalty.first_token;
}

absl::Status WorkerRuntime::SampleTokens(const v1::StepRequest& request,
                                         v1::StepResponse* response) {
  if (engine_->backend().samples_on_device()) return SampleOnDevice(request, response);
  const int64_t vocab_size = forward_output_.vocab_size;
  for (int i = 0; i < request.work_size(); ++i) {
    const v1::SequenceWork& work = request.work(i);
    if (!work.sample()) continue;
    const Sequence& seq = *sequences_.at(work.seq_id());
    std::span<float> logits(forward_output_.logits.data() + forward_output_.first_row[i] * vocab_size,
                            static_cast<size_t>(vocab_size));
    const uint64_t position = static_cast<uint64_t>(work.start_position() + work.num_tokens());
    sampler_->Sample(logits, seq.sampling, seq.counts, position, &sampled_);
    v1::SampledToken* token = response->add_tokens();
    token->set_seq_id(work.seq_id());
    token->set_token_id(sampled_.token_id);
    token->set_logprob(sampled_.logprob);
    for (const auto& [id, logprob] : sampled_.top_logprobs) {
      token->add_top_token_ids(id);
      token->add_top_logprobs(logprob);
    }
  }
  return absl::OkStatus();
}

absl::Status WorkerRuntime::SampleOnDevice(const v1::StepRequest& request,
                                           v1::StepResponse* response) {
  Backend& backend = engine_->backend();
  const int64_t vocab_size = forward_output_.vocab_size;
  device_rows_.clear();
  device_params_.clear();
  penalty_rows_.clear();
  penalty_tokens_.clear();
  logprob_rows_.clear();
  logprob_of_.clear();
  int32_t num_top = 0;
  for (int i = 0; i < request.work_size(); ++i) {
    const v1::SequenceWork& work = request.work(i);
    if (!work.sample()) continue;
    const Sequence& seq = *sequences_.at(work.seq_id());
    const SamplingParams& p = seq.sampling;
    const int64_t row = forward_output_.first_row[i];
    if (HasPenalties(p)) AddPenaltyRow(row, p, seq.counts);
    logprob_of_.push_back(p.num_logprobs > 0 ? static_cast<int32_t>(logprob_rows_.size()) : -1);
    if (p.num_logprobs > 0) {
      logprob_rows_.push_back(static_cast<int32_t>(row));
      num_top = std::max(num_top, p.num_logprobs);
    }
    device_rows_.push_back(row);
    device_params_.push_back(DeviceSamplingRow{
        p.temperature, p.top_k, p.top_p, p.min_p, p.seed,
        static_cast<uint64_t>(work.start_position() + work.num_tokens())});
  }
  if (device_rows_.empty()) return absl::OkStatus();
  auto fail = [&](const absl::Status& status) {
    return absl::Status(status.code(), absl::StrCat("step ", request.step_id(), " rank ", rank_,
                                                    " sampling: ", status.message()));
  };
  // Logprobs are of the raw logits: keep a copy of those rows before the penalties change them.
  const int64_t num_logprob_rows = static_cast<int64_t>(logprob_rows_.size());
  Tensor raw;
  if (num_logprob_rows > 0) {
    if (raw_logits_.empty() || raw_logits_.dim(0) < num_logprob_rows ||
        raw_logits_.dim(1) != vocab_size) {
      absl::StatusOr<Tensor> buffer = backend.Empty(DType::kF32, {num_logprob_rows, vocab_size});
      if (!buffer.ok()) return fail(buffer.status());
      raw_logits_ = *std::move(buffer);
    }
    raw = raw_logits_.Rows(0, num_logprob_rows);
    absl::Status status =
        backend.GatherRows(forward_output_.device_logits, logprob_rows_, {}, raw);
    if (!status.ok()) return fail(status);
  }
  if (!penalty_rows_.empty()) {
    absl::Status status =
        backend.ApplyPenalties(forward_output_.device_logits, penalty_rows_, penalty_tokens_);
    if (!status.ok()) return fail(status);
  }
  device_tokens_.resize(device_rows_.size());
  absl::Status status = backend.SampleTokens(forward_output_.device_logits, device_rows_,
                                             device_params_, device_tokens_);
  if (!status.ok()) return fail(status);
  if (num_logprob_rows > 0) {
    logprob_index_.resize(num_logprob_rows);
    logprob_chosen_.resize(num_logprob_rows);
    for (int64_t r = 0; r < num_logprob_rows; ++r) logprob_index_[r] = r;
    for (size_t i = 0; i < logprob_of_.size(); ++i) {
      if (logprob_of_[i] >= 0) logprob_chosen_[logprob_of_[i]] = device_tokens_[i];
    }
    chosen_logprobs_.resize(num_logprob_rows);
    top_ids_.resize(num_logprob_rows * num_top);
    top_logprobs_.resize(num_logprob_rows * num_top);
    status = backend.Logprobs(raw, logprob_index_, logprob_chosen_, num_top, chosen_logprobs_,
                              top_ids_, top_logprobs_);
    if (!status.ok()) return fail(status);
  }
  size_t next = 0;
  for (const v1::SequenceWork& work : request.work()) {
    if (!work.sample()) continue;
    v1::SampledToken* token = response->add_tokens();
    token->set_seq_id(work.seq_id());
    token->set_token_id(device_tokens_[next]);
    const int32_t lp = logprob_of_[next++];
    if (lp < 0) continue;  // no logprob: none was asked for
    token->set_logprob(chosen_logprobs_[lp]);
    const int32_t wanted = sequences_.at(work.seq_id())->sampling.num_logprobs;
    for (int32_t j = 0; j < wanted; ++j) {
      token->add_top_token_ids(top_ids_[lp * num_top + j]);
      token->add_top_logprobs(top_logprobs_[lp * num_top + j]);
    }
  }
  return absl::OkStatus();
}

absl::Status WorkerRuntime::FailDataPlane(int64_t step_id, absl::Status status) {
  SY_LOG_ERROR("step={} rank {} forward failed: {}", step_id, rank_, status.ToString());
  Abort(absl::StrCat("rank ", rank_, " step ", step_id, " failed: ", status.message()));
  return status;
}

}  // namespace switchyard
