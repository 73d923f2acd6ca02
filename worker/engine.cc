#include "worker/engine.h"

#include <cmath>
#include <numbers>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/tensor_names.h"

namespace switchyard {
namespace {

// Activation slots in the scratch arena.
enum Slot { kHidden, kNormed, kQ, kK, kV, kAttn, kFfnA, kFfnB, kFfnC, kFfnD, kLogitsIn, kLogits, kGate };

}  // namespace

std::vector<float> ComputeRopeInvFreq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv_freq(half);
  const RopeScaling& s = c.rope_scaling;
  for (int64_t i = 0; i < half; ++i) {
    // Computed in float32 like the reference frameworks, then scaled.
    double f = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / c.head_dim);
    f = static_cast<float>(f);
    if (s.type == "linear") {
      f /= s.factor;
    } else if (s.type == "llama3") {
      const double old_len = s.original_max_position_embeddings;
      const double low_freq_wavelen = old_len / s.low_freq_factor;
      const double high_freq_wavelen = old_len / s.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_freq_wavelen) {
        f /= s.factor;
      } else if (wavelen >= high_freq_wavelen && s.high_freq_factor != s.low_freq_factor) {
        const double smooth = (old_len / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
    inv_freq[i] = static_cast<float>(f);
  }
  return inv_freq;
}

Engine::Engine(ModelConfig config, std::unique_ptr<Backend> backend)
    : config_(std::move(config)), backend_(std::move(backend)) {
  scratch_ = std::make_unique<ScratchArena>(*backend_);
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Load(const std::filesystem::path& model_dir,
                                                     std::unique_ptr<Backend> backend,
                                                     const EngineOptions& options) {
  SY_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  SY_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(model_dir));
  SY_RETURN_IF_ERROR(ValidateCheckpoint(config, *checkpoint));
  return Create(config, *checkpoint, std::move(backend), options);
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const ModelConfig& config,
                                                       const Checkpoint& checkpoint,
                                                       std::unique_ptr<Backend> backend,
                                                       const EngineOptions& options) {
  std::unique_ptr<Engine> engine(new Engine(config, std::move(backend)));
  const uint64_t bytes_before = checkpoint.bytes_loaded();
  SY_ASSIGN_OR_RETURN(engine->weights_,
                      LoadModelWeights(config, checkpoint, *engine->backend_, options.weights));
  engine->weight_bytes_loaded_ = checkpoint.bytes_loaded() - bytes_before;
  engine->inv_freq_ = ComputeRopeInvFreq(config);
  engine->moe_executor_ = MakeLocalMoeExecutor(engine->config_, engine->weights_, *engine->backend_);
  SY_RETURN_IF_ERROR(engine->AllocateKvCache(options));
  return engine;
}

uint64_t Engine::resident_bytes() const {
  uint64_t bytes = weights_.resident_bytes;
  for (const Tensor& t : k_cache_) bytes += static_cast<uint64_t>(t.num_bytes());
  for (const Tensor& t : v_cache_) bytes += static_cast<uint64_t>(t.num_bytes());
  return bytes;
}

absl::Status Engine::AllocateKvCache(const EngineOptions& options) {
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("block_size: expected > 0, found ", options.block_size));
  }
  block_size_ = options.block_size;
  const int64_t kv_dim = config_.num_key_value_heads * config_.head_dim;
  const DType kv_dtype = backend_->activation_dtype();
  const int64_t bytes_per_block =
      2 * config_.num_hidden_layers * block_size_ * kv_dim * DTypeSize(kv_dtype);
  num_kv_blocks_ = options.num_kv_blocks > 0 ? options.num_kv_blocks
                                             : options.kv_cache_bytes / bytes_per_block;
  if (num_kv_blocks_ < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv cache: ", options.kv_cache_bytes, " bytes hold no block of ", bytes_per_block, " bytes"));
  }
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    SY_ASSIGN_OR_RETURN(Tensor k, backend_->Empty(kv_dtype, {num_kv_blocks_ * block_size_, kv_dim}));
    SY_ASSIGN_OR_RETURN(Tensor v, backend_->Empty(kv_dtype, {num_kv_blocks_ * block_size_, kv_dim}));
    k_cache_.push_back(std::move(k));
    v_cache_.push_back(std::move(v));
  }
  return absl::OkStatus();
}

absl::Status Engine::ValidateBatch(std::span<const BatchEntry> batch) const {
  for (size_t s = 0; s < batch.size(); ++s) {
    const BatchEntry& e = batch[s];
    if (e.token_ids.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("batch entry ", s, ": expected >= 1 token, found 0"));
    }
    for (int32_t id : e.token_ids) {
      if (id < 0 || id >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("batch entry ", s, ": token id ", id,
                                                       " outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
    }
    const int64_t end = e.start_position + static_cast<int64_t>(e.token_ids.size());
    const int64_t blocks_needed = (end + block_size_ - 1) / block_size_;
    if (e.start_position < 0 || static_cast<int64_t>(e.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError(absl::StrCat("batch entry ", s, ": positions [", e.start_position, ", ",
                                                     end, ") need ", blocks_needed, " KV blocks, block table has ",
                                                     e.block_table.size()));
    }
    for (int32_t block : e.block_table) {
      if (block < 0 || block >= num_kv_blocks_) {
        return absl::InvalidArgumentError(absl::StrCat("batch entry ", s, ": KV block ", block,
                                                       " outside [0, ", num_kv_blocks_, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::PrepareStep(std::span<const BatchEntry> batch) {
  step_tokens_.clear();
  step_positions_.clear();
  step_slots_.clear();
  step_seqs_.clear();
  step_temperature_scale_.clear();
  for (const BatchEntry& e : batch) {
    kernels::cpu::AttentionSeq seq;
    seq.q_row_begin = static_cast<int64_t>(step_tokens_.size());
    seq.num_q = static_cast<int64_t>(e.token_ids.size());
    seq.start_pos = e.start_position;
    seq.block_table = e.block_table.data();
    step_seqs_.push_back(seq);
    for (size_t i = 0; i < e.token_ids.size(); ++i) {
      const int64_t pos = e.start_position + static_cast<int64_t>(i);
      step_tokens_.push_back(e.token_ids[i]);
      step_positions_.push_back(static_cast<int32_t>(pos));
      step_slots_.push_back(kernels::cpu::KvSlot(e.block_table.data(), pos, block_size_));
      if (config_.attn_temperature_tuning) {
        step_temperature_scale_.push_back(static_cast<float>(
            std::log(std::floor((pos + 1.0) / config_.floor_scale) + 1.0) * config_.attn_scale + 1.0));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::Forward(std::span<const BatchEntry> batch, ForwardOutput* output,
                             const ForwardOptions& options) {
  if (batch.empty()) {
    output->vocab_size = config_.vocab_size;
    output->logits.clear();
    output->first_row.clear();
    output->device_logits = Tensor();
    return ForwardIdle();
  }
  SY_RETURN_IF_ERROR(ValidateBatch(batch));
  SY_RETURN_IF_ERROR(PrepareStep(batch));
  const int64_t num_tokens = static_cast<int64_t>(step_tokens_.size());
  SY_ASSIGN_OR_RETURN(Tensor x, scratch_->Get(kHidden, {num_tokens, config_.hidden_size}));
  SY_RETURN_IF_ERROR(backend_->Embedding(weights_.embed_tokens, step_tokens_, x));
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    SY_RETURN_IF_ERROR(AttentionBlock(layer, x));
    SY_RETURN_IF_ERROR(FfnBlock(layer, x));
  }
  return ComputeLogits(batch, x, options, output);
}

absl::Status Engine::ForwardIdle() {
  // Zero-row views without storage: nothing is read or written, only the collectives run.
  const Tensor none(nullptr, nullptr, backend_->activation_dtype(), {0, config_.hidden_size});
  for (int64_t layer = 0; layer < config_.num_hidden_layers; ++layer) {
    if (!config_.layer_is_moe[layer]) continue;
    SY_RETURN_IF_ERROR(moe_executor_->Run(layer, none, {}, {}, config_.num_experts_per_tok, none));
  }
  return absl::OkStatus();
}

absl::Status Engine::AttentionBlock(int64_t layer_idx, const Tensor& x) {
  const LayerWeights& w = weights_.layers[layer_idx];
  const ModelConfig& c = config_;
  const int64_t t = x.dim(0), hd = c.head_dim, nh = c.num_attention_heads, nkv = c.num_key_value_heads;
  SY_ASSIGN_OR_RETURN(Tensor xn, scratch_->Get(kNormed, {t, c.hidden_size}));
  SY_ASSIGN_OR_RETURN(Tensor q, scratch_->Get(kQ, {t, nh * hd}));
  SY_ASSIGN_OR_RETURN(Tensor k, scratch_->Get(kK, {t, nkv * hd}));
  SY_ASSIGN_OR_RETURN(Tensor v, scratch_->Get(kV, {t, nkv * hd}));
  SY_ASSIGN_OR_RETURN(Tensor attn, scratch_->Get(kAttn, {t, nh * hd}));
  SY_RETURN_IF_ERROR(backend_->RmsNorm(x, w.input_norm, c.rms_norm_eps, xn));
  SY_RETURN_IF_ERROR(backend_->Linear(xn, w.q_proj, w.q_bias, q));
  SY_RETURN_IF_ERROR(backend_->Linear(xn, w.k_proj, w.k_bias, k));
  SY_RETURN_IF_ERROR(backend_->Linear(xn, w.v_proj, w.v_bias, v));
  if (c.qk_norm == QkNorm::kFlatRms) {
    SY_RETURN_IF_ERROR(backend_->RmsNorm(q, w.q_norm, c.rms_norm_eps, q));
    SY_RETURN_IF_ERROR(backend_->RmsNorm(k, w.k_norm, c.rms_norm_eps, k));
  } else if (c.qk_norm == QkNorm::kPerHeadRms) {
    SY_RETURN_IF_ERROR(backend_->RmsNorm(q.Reshape({t * nh, hd}), w.q_norm, c.rms_norm_eps, q.Reshape({t * nh, hd})));
    SY_RETURN_IF_ERROR(backend_->RmsNorm(k.Reshape({t * nkv, hd}), w.k_norm, c.rms_norm_eps, k.Reshape({t * nkv, hd})));
  }
  if (c.clip_qkv > 0) {
    for (const Tensor* p : {&q, &k, &v}) SY_RETURN_IF_ERROR(backend_->Clamp(*p, c.clip_qkv));
  }
  const bool use_rope = c.layer_uses_rope.empty() || c.layer_uses_rope[layer_idx];
  if (use_rope) {
    const bool interleaved = c.rope_style == RopeStyle::kInterleaved;
    SY_RETURN_IF_ERROR(backend_->Rope(q, step_positions_, inv_freq_, nh, hd, interleaved));
    SY_RETURN_IF_ERROR(backend_->Rope(k, step_positions_, inv_freq_, nkv, hd, interleaved));
    if (c.qk_norm == QkNorm::kL2) {
      SY_RETURN_IF_ERROR(backend_->RmsNorm(q.Reshape({t * nh, hd}), Tensor(), c.rms_norm_eps, q.Reshape({t * nh, hd})));
      SY_RETURN_IF_ERROR(backend_->RmsNorm(k.Reshape({t * nkv, hd}), Tensor(), c.rms_norm_eps, k.Reshape({t * nkv, hd})));
    }
  } else if (c.attn_temperature_tuning) {
    SY_RETURN_IF_ERROR(backend_->ScaleRows(q, step_temperature_scale_));
  }
  SY_RETURN_IF_ERROR(backend_->WriteKvCache(k, v, step_slots_, k_cache_[layer_idx], v_cache_[layer_idx]));
  AttentionParams params;
  params.num_heads = nh;
  params.num_kv_heads = nkv;
  params.head_dim = hd;
  params.block_size = block_size_;
  params.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  params.chunk_size = use_rope ? c.attention_chunk_size : 0;
  SY_RETURN_IF_ERROR(backend_->Attention(q, k_cache_[layer_idx], v_cache_[layer_idx], step_seqs_, params, attn));
  return backend_->Linear(attn, w.o_proj, w.o_bias, x, /*accumulate=*/true);
}

absl::Status Engine::FfnBlock(int64_t layer_idx, const Tensor& x) {
  const LayerWeights& w = weights_.layers[layer_idx];
  const ModelConfig& c = config_;
  const int64_t t = x.dim(0);
  SY_ASSIGN_OR_RETURN(Tensor xn, scratch_->Get(kNormed, {t, c.hidden_size}));
  SY_RETURN_IF_ERROR(backend_->RmsNorm(x, w.post_attention_norm, c.rms_norm_eps, xn));
  auto swiglu = [&](const DenseFfnWeights& f, const Tensor& out, bool accumulate) -> absl::Status {
    const int64_t inter = f.gate.dim(0);
    SY_ASSIGN_OR_RETURN(Tensor gate, scratch_->Get(kFfnA, {t, inter}));
    SY_ASSIGN_OR_RETURN(Tensor up, scratch_->Get(kFfnB, {t, inter}));
    SY_RETURN_IF_ERROR(backend_->Linear(xn, f.gate, Tensor(), gate));
    SY_RETURN_IF_ERROR(backend_->Linear(xn, f.up, Tensor(), up));
    SY_RETURN_IF_ERROR(backend_->SiluMul(gate, up, gate));
    return backend_->Linear(gate, f.down, Tensor(), out, accumulate);
  };
  if (!config_.layer_is_moe[layer_idx]) return swiglu(w.dense, x, /*accumulate=*/true);

  const int64_t k = c.num_experts_per_tok;
  SY_ASSIGN_OR_RETURN(Tensor router_logits, scratch_->Get(kFfnC, DType::kF32, {t, c.num_experts}));
  SY_RETURN_IF_ERROR(backend_->Linear(xn, w.router, Tensor(), router_logits));
  topk_ids_.resize(t * k);
  topk_weights_.resize(t * k);
  const auto kind = c.router_scoring == RouterScoring::kSoftmax ? kernels::cpu::RouterKind::kSoftmaxTopK
                                                               : kernels::cpu::RouterKind::kTopKSigmoid;
  SY_RETURN_IF_ERROR(backend_->RouterTopK(router_logits, k, kind, c.norm_topk_prob, topk_ids_, topk_weights_));
  SY_ASSIGN_OR_RETURN(Tensor routed, scratch_->Get(kFfnD, {t, c.hidden_size}));
  SY_RETURN_IF_ERROR(moe_executor_->Run(layer_idx, xn, topk_ids_, topk_weights_, k, routed));
  SY_RETURN_IF_ERROR(backend_->Add(x, routed));
  if (w.shared_expert.gate.empty()) return absl::OkStatus();
  if (w.shared_expert_gate.empty()) return swiglu(w.shared_expert, x, /*accumulate=*/true);
  // Qwen2-MoE: shared output scaled by sigmoid(shared_expert_gate(x)).
  SY_RETURN_IF_ERROR(swiglu(w.shared_expert, routed, /*accumulate=*/false));
  SY_ASSIGN_OR_RETURN(Tensor gate_logit, scratch_->Get(kGate, {t, 1}));
  SY_RETURN_IF_ERROR(backend_->Linear(xn, w.shared_expert_gate, Tensor(), gate_logit));
  SY_RETURN_IF_ERROR(backend_->ScaleRowsBySigmoid(routed, gate_logit));
  return backend_->Add(x, routed);
}

absl::Status Engine::ComputeLogits(std::span<const BatchEntry> batch, const Tensor& x,
                                   const ForwardOptions& options, ForwardOutput* output) {
  std::vector<int32_t>& rows = logit_rows_;
  rows.clear();
  output->first_row.clear();
  for (const kernels::cpu::AttentionSeq& seq : step_seqs_) {
    output->first_row.push_back(static_cast<int64_t>(rows.size()));
    const bool all = batch[output->first_row.size() - 1].all_logits;
    for (int64_t i = all ? 0 : seq.num_q - 1; i < seq.num_q; ++i) {
      rows.push_back(static_cast<int32_t>(seq.q_row_begin + i));
    }
  }
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  SY_ASSIGN_OR_RETURN(Tensor selected, scratch_->Get(kLogitsIn, {num_rows, config_.hidden_size}));
  SY_ASSIGN_OR_RETURN(Tensor logits, scratch_->Get(kLogits, DType::kF32, {num_rows, config_.vocab_size}));
  SY_RETURN_IF_ERROR(backend_->GatherRows(x, rows, {}, selected));
  SY_RETURN_IF_ERROR(backend_->RmsNorm(selected, weights_.final_norm, config_.rms_norm_eps, selected));
  SY_RETURN_IF_ERROR(backend_->Linear(selected, weights_.lm_head, Tensor(), logits));
  output->vocab_size = config_.vocab_size;
  output->device_logits = logits;
  if (!options.logits_to_host) {
    output->logits.clear();
    return absl::OkStatus();
  }
  output->logits.resize(num_rows * config_.vocab_size);
  return backend_->CopyToHost(logits, output->logits);
}

}  // namespace switchyard
