#include "common/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using Json = nlohmann::json;

// Short rendering of a JSON value for error messages.
std::string Found(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return absl::StrCat(value.type_name(), " ", text);
}

// Typed access to the fields of one JSON object, with error messages naming the field path
// ("text_config.hidden_size"). A field that is missing or null takes the Hugging Face default.
class Fields {
 public:
  Fields(const Json& object, std::string path_prefix)
      : object_(object), prefix_(std::move(path_prefix)) {}

  // Present in the file, even as null.
  bool Contains(const char* name) const { return object_.contains(name); }
  // Present and not null.
  bool Has(const char* name) const {
    auto it = object_.find(name);
    return it != object_.end() && !it->is_null();
  }
  const Json* Get(const char* name) const {
    auto it = object_.find(name);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }
  std::string Path(const char* name) const { return prefix_ + name; }

  absl::Status Bad(const char* name, std::string_view expected, const Json& value) const {
    return absl::InvalidArgumentError(absl::StrCat("config.json field '", Path(name),
                                                   "': expected ", std::string(expected),
                                                   ", found ", Found(value)));
  }

  absl::StatusOr<int64_t> Int(const char* name) const {
    const Json* value = Get(name);
    if (value == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: required field '", Path(name), "' is missing"));
    }
    return AsInt(name, *value);
  }
  absl::StatusOr<int64_t> IntOr(const char* name, int64_t fallback) const {
    const Json* value = Get(name);
    return value == nullptr ? absl::StatusOr<int64_t>(fallback) : AsInt(name, *value);
  }
  absl::StatusOr<double> DoubleOr(const char* name, double fallback) const {
    const Json* value = Get(name);
    if (value == nullptr) return fallback;
    if (!value->is_number()) return Bad(name, "a number", *value);
    return value->get<double>();
  }
  absl::StatusOr<bool> BoolOr(const char* name, bool fallback) const {
    const Json* value = Get(name);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) return Bad(name, "true or false", *value);
    return value->get<bool>();
  }
  absl::StatusOr<std::string> StringOr(const char* name, std::string fallback) const {
    const Json* value = Get(name);
    if (value == nullptr) return fallback;
    if (!value->is_string()) return Bad(name, "a string", *value);
    return value->get<std::string>();
  }
  // A list of integers; missing or null gives an empty list.
  absl::StatusOr<std::vector<int64_t>> IntList(const char* name) const {
    std::vector<int64_t> out;
    const Json* value = Get(name);
    if (value == nullptr) return out;
    if (!value->is_array()) return Bad(name, "a list of integers", *value);
    for (const Json& item : *value) {
      if (!item.is_number_integer()) return Bad(name, "a list of integers", *value);
      out.push_back(item.get<int64_t>());
    }
    return out;
  }

 private:
  absl::StatusOr<int64_t> AsInt(const char* name, const Json& value) const {
    if (value.is_number_integer()) return value.get<int64_t>();
    // Some exporters write integral values as floats (8192.0).
    if (value.is_number_float()) {
      double v = value.get<double>();
      if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.0e15) {
        return static_cast<int64_t>(v);
      }
    }
    return Bad(name, "an integer", value);
  }

  const Json& object_;
  std::string prefix_;
};

absl::Status Unimplemented(std::string_view what) {
  return absl::UnimplementedError(absl::StrCat("config.json: ", std::string(what)));
}

absl::Status RequirePositive(const Fields& f, const char* name, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("config.json field '", f.Path(name),
                                                 "': expected a positive integer, found ", value));
}

// Per-family defaults of the Hugging Face configuration classes, for fields a config may omit.
struct FamilyDefaults {
  double rms_norm_eps;
  double rope_theta;
  int64_t max_position_embeddings;
  int64_t num_key_value_heads;  // 0: same as num_attention_heads
  int64_t bos_token_id;         // -1: none
  int64_t eos_token_id;         // -1: none
};

FamilyDefaults DefaultsOf(ModelFamily family) {
  switch (family) {
    case ModelFamily::kLlama:
      return {1e-6, 10000.0, 2048, 0, 1, 2};
    case ModelFamily::kMixtral:
      return {1e-5, 1e6, 4096 * 32, 8, 1, 2};
    case ModelFamily::kQwen2Moe:
      return {1e-6, 10000.0, 32768, 16, -1, -1};
    case ModelFamily::kQwen3Moe:
      return {1e-6, 10000.0, 32768, 4, -1, -1};
    case ModelFamily::kOlmoe:
      return {1e-5, 10000.0, 4096, 0, -1, 50279};
    case ModelFamily::kLlama4:
      return {1e-5, 500000.0, 4096 * 32, 8, 1, 2};
  }
  return {1e-5, 10000.0, 2048, 0, -1, -1};
}

absl::Status ParseRopeScaling(const Fields& f, const char* name, ModelConfig* config) {
  const Json* value = f.Get(name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_object()) return f.Bad(name, "an object or null", *value);
  Fields rope(*value, f.Path(name) + ".");
  std::string key = rope.Has("rope_type") ? "rope_type" : "type";
  SY_ASSIGN_OR_RETURN(std::string type, rope.StringOr(key.c_str(), "default"));
  RopeScaling& scaling = config->rope_scaling;
  scaling.type = type;
  if (type == "default") return absl::OkStatus();
  if (type != "linear" && type != "llama3") {
    return Unimplemented(absl::StrCat("field '", rope.Path(key.c_str()), "' is '", type,
                                      "'; supported: default, linear, llama3"));
  }
  SY_ASSIGN_OR_RETURN(scaling.factor, rope.DoubleOr("factor", 0.0));
  if (!(scaling.factor > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json field '", rope.Path("factor"), "': expected a positive number"));
  }
  if (type == "linear") return absl::OkStatus();
  SY_ASSIGN_OR_RETURN(scaling.low_freq_factor, rope.DoubleOr("low_freq_factor", 1.0));
  SY_ASSIGN_OR_RETURN(scaling.high_freq_factor, rope.DoubleOr("high_freq_factor", 4.0));
  SY_ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                      rope.Int("original_max_position_embeddings"));
  SY_RETURN_IF_ERROR(RequirePositive(rope, "original_max_position_embeddings",
                                     scaling.original_max_position_embeddings));
  if (scaling.high_freq_factor < scaling.low_freq_factor || scaling.low_freq_factor <= 0.0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json field '", rope.Path("high_freq_factor"), "': expected >= low_freq_factor (",
        scaling.low_freq_factor, ") > 0, found ", scaling.high_freq_factor));
  }
  return absl::OkStatus();
}

// RoPE: legacy "rope_theta" + "rope_scaling", or transformers 5's "rope_parameters" (theta inside).
absl::Status ParseRope(const Fields& f, double default_theta, ModelConfig* config) {
  SY_ASSIGN_OR_RETURN(config->rope_theta, f.DoubleOr("rope_theta", default_theta));
  SY_RETURN_IF_ERROR(ParseRopeScaling(f, "rope_scaling", config));
  if (const Json* params = f.Get("rope_parameters"); params != nullptr && params->is_object()) {
    Fields p(*params, f.Path("rope_parameters") + ".");
    SY_ASSIGN_OR_RETURN(config->rope_theta, p.DoubleOr("rope_theta", config->rope_theta));
    SY_RETURN_IF_ERROR(ParseRopeScaling(f, "rope_parameters", config));
  }
  if (!(config->rope_theta > 0.0)) {
    return absl::InvalidArgumentError("config.json field 'rope_theta': expected a positive number");
  }
  return absl::OkStatus();
}

// A field absent from the file takes the class default; null means none. eos may be a list.
absl::Status ParseTokenIds(const Fields& f, const FamilyDefaults& d, ModelConfig* config) {
  config->bos_token_id = f.Contains("bos_token_id") ? -1 : d.bos_token_id;
  SY_ASSIGN_OR_RETURN(config->bos_token_id, f.IntOr("bos_token_id", config->bos_token_id));
  config->eos_token_ids.clear();
  if (!f.Contains("eos_token_id")) {
    if (d.eos_token_id >= 0) config->eos_token_ids.push_back(d.eos_token_id);
    return absl::OkStatus();
  }
  const Json* eos = f.Get("eos_token_id");
  if (eos == nullptr) return absl::OkStatus();
  if (eos->is_number_integer()) {
    config->eos_token_ids.push_back(eos->get<int64_t>());
    return absl::OkStatus();
  }
  SY_ASSIGN_OR_RETURN(config->eos_token_ids, f.IntList("eos_token_id"));
  return absl::OkStatus();
}

// Fields every family has.
absl::Status ParseCommon(const Fields& f, ModelConfig* config) {
  const FamilyDefaults d = DefaultsOf(config->family);
  SY_ASSIGN_OR_RETURN(config->vocab_size, f.Int("vocab_size"));
  SY_ASSIGN_OR_RETURN(config->hidden_size, f.Int("hidden_size"));
  SY_ASSIGN_OR_RETURN(config->num_hidden_layers, f.Int("num_hidden_layers"));
  SY_ASSIGN_OR_RETURN(config->num_attention_heads, f.Int("num_attention_heads"));
  for (auto [name, value] : {std::pair{"vocab_size", config->vocab_size},
                             {"hidden_size", config->hidden_size},
                             {"num_hidden_layers", config->num_hidden_layers},
                             {"num_attention_heads", config->num_attention_heads}}) {
    SY_RETURN_IF_ERROR(RequirePositive(f, name, value));
  }
  // Missing takes the class default; explicit null means "same as num_attention_heads".
  int64_t kv_default = d.num_key_value_heads;
  if (kv_default == 0 || f.Contains("num_key_value_heads")) {
    kv_default = config->num_attention_heads;
  }
  SY_ASSIGN_OR_RETURN(config->num_key_value_heads, f.IntOr("num_key_value_heads", kv_default));
  SY_RETURN_IF_ERROR(RequirePositive(f, "num_key_value_heads", config->num_key_value_heads));
  if (config->num_attention_heads % config->num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: num_attention_heads (", config->num_attention_heads,
        ") must be a multiple of num_key_value_heads (", config->num_key_value_heads, ")"));
  }
  SY_ASSIGN_OR_RETURN(config->max_position_embeddings,
                      f.IntOr("max_position_embeddings", d.max_position_embeddings));
  SY_ASSIGN_OR_RETURN(config->rms_norm_eps, f.DoubleOr("rms_norm_eps", d.rms_norm_eps));
  SY_ASSIGN_OR_RETURN(config->tie_word_embeddings, f.BoolOr("tie_word_embeddings", false));
  SY_ASSIGN_OR_RETURN(std::string act, f.StringOr("hidden_act", "silu"));
  if (act != "silu") {
    return Unimplemented(
        absl::StrCat("field '", f.Path("hidden_act"), "' is '", act, "'; only silu is supported"));
  }
  SY_RETURN_IF_ERROR(ParseRope(f, d.rope_theta, config));
  return ParseTokenIds(f, d, config);
}

// head_dim: explicit value, else hidden_size / num_attention_heads.
absl::Status ParseHeadDim(const Fields& f, ModelConfig* config) {
  SY_ASSIGN_OR_RETURN(config->head_dim,
                      f.IntOr("head_dim", config->hidden_size / config->num_attention_heads));
  return RequirePositive(f, "head_dim", config->head_dim);
}

absl::Status ParseExperts(const Fields& f, const char* num_name, ModelConfig* config) {
  SY_ASSIGN_OR_RETURN(config->num_experts, f.Int(num_name));
  if (config->num_experts < 0) return f.Bad(num_name, "an integer >= 0", *f.Get(num_name));
  if (config->num_experts == 0) return absl::OkStatus();
  SY_ASSIGN_OR_RETURN(config->num_experts_per_tok, f.Int("num_experts_per_tok"));
  if (config->num_experts_per_tok < 1 || config->num_experts_per_tok > config->num_experts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json field '", f.Path("num_experts_per_tok"), "': expected 1..", num_name, " (",
        config->num_experts, "), found ", config->num_experts_per_tok));
  }
  return absl::OkStatus();
}

absl::Status RejectSlidingWindow(const Fields& f, const ModelConfig& config,
                                 bool gated_by_use_sliding_window) {
  if (gated_by_use_sliding_window) {
    SY_ASSIGN_OR_RETURN(bool use, f.BoolOr("use_sliding_window", false));
    if (use) return Unimplemented("field 'use_sliding_window' is true; sliding window attention");
    return absl::OkStatus();
  }
  // A window at least as long as the context never takes effect.
  SY_ASSIGN_OR_RETURN(int64_t window, f.IntOr("sliding_window", 0));
  if (window > 0 && window < config.max_position_embeddings) {
    return Unimplemented(absl::StrCat("field '", f.Path("sliding_window"),
                                      "' is set; sliding window attention is not supported"));
  }
  return absl::OkStatus();
}

absl::Status ParseLlama(const Fields& f, ModelConfig* config) {
  SY_RETURN_IF_ERROR(ParseHeadDim(f, config));
  SY_ASSIGN_OR_RETURN(config->intermediate_size, f.Int("intermediate_size"));
  SY_RETURN_IF_ERROR(RequirePositive(f, "intermediate_size", config->intermediate_size));
  SY_ASSIGN_OR_RETURN(config->attention_bias, f.BoolOr("attention_bias", false));
  config->o_proj_bias = config->attention_bias;
  SY_ASSIGN_OR_RETURN(bool mlp_bias, f.BoolOr("mlp_bias", false));
  if (mlp_bias) return Unimplemented("field 'mlp_bias' is true; MLP biases are not supported");
  config->layer_is_moe.assign(config->num_hidden_layers, false);
  return absl::OkStatus();
}

absl::Status ParseMixtral(const Fields& f, ModelConfig* config) {
  SY_RETURN_IF_ERROR(ParseHeadDim(f, config));
  SY_RETURN_IF_ERROR(RejectSlidingWindow(f, *config, /*gated_by_use_sliding_window=*/false));
  SY_ASSIGN_OR_RETURN(config->moe_intermediate_size, f.Int("intermediate_size"));
  SY_RETURN_IF_ERROR(RequirePositive(f, "intermediate_size", config->moe_intermediate_size));
  SY_RETURN_IF_ERROR(ParseExperts(f, "num_local_experts", config));
  SY_RETURN_IF_ERROR(RequirePositive(f, "num_local_experts", config->num_experts));
  config->expert_layout = ExpertLayout::kMixtralW123;
  config->norm_topk_prob = true;  // Mixtral always renormalises the top-k softmax weights
  config->layer_is_moe.assign(config->num_hidden_layers, true);
  return absl::OkStatus();
}

// Qwen2-MoE and Qwen3-MoE: MoE iff not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
absl::Status ParseQwenMoe(const Fields& f, ModelConfig* config) {
  const bool qwen2 = config->family == ModelFamily::kQwen2Moe;
  SY_RETURN_IF_ERROR(ParseHeadDim(f, config));
  SY_RETURN_IF_ERROR(RejectSlidingWindow(f, *config, /*gated_by_use_sliding_window=*/true));
  SY_ASSIGN_OR_RETURN(config->intermediate_size, f.Int("intermediate_size"));
  SY_RETURN_IF_ERROR(ParseExperts(f, "num_experts", config));
  SY_ASSIGN_OR_RETURN(config->norm_topk_prob, f.BoolOr("norm_topk_prob", false));
  SY_ASSIGN_OR_RETURN(int64_t sparse_step, f.IntOr("decoder_sparse_step", 1));
  SY_RETURN_IF_ERROR(RequirePositive(f, "decoder_sparse_step", sparse_step));
  SY_ASSIGN_OR_RETURN(std::vector<int64_t> mlp_only, f.IntList("mlp_only_layers"));
  config->layer_is_moe.assign(config->num_hidden_layers, false);
  for (int64_t i = 0; i < config->num_hidden_layers; ++i) {
    bool listed = std::find(mlp_only.begin(), mlp_only.end(), i) != mlp_only.end();
    config->layer_is_moe[i] = !listed && config->num_experts > 0 && (i + 1) % sparse_step == 0;
  }
  if (config->num_experts > 0) {
    config->expert_layout = ExpertLayout::kPerExpertMlp;
    SY_ASSIGN_OR_RETURN(config->moe_intermediate_size, f.Int("moe_intermediate_size"));
    SY_RETURN_IF_ERROR(RequirePositive(f, "moe_intermediate_size", config->moe_intermediate_size));
  }
  if (config->num_moe_layers() < config->num_hidden_layers) {
    SY_RETURN_IF_ERROR(RequirePositive(f, "intermediate_size", config->intermediate_size));
  }
  if (qwen2) {
    SY_ASSIGN_OR_RETURN(config->attention_bias, f.BoolOr("qkv_bias", true));
    if (config->num_experts > 0) {
      SY_ASSIGN_OR_RETURN(config->shared_expert_intermediate_size,
                          f.Int("shared_expert_intermediate_size"));
      config->shared_expert_gate = config->shared_expert_intermediate_size > 0;
    }
  } else {
    SY_ASSIGN_OR_RETURN(config->attention_bias, f.BoolOr("attention_bias", false));
    config->o_proj_bias = config->attention_bias;
    config->qk_norm = QkNorm::kPerHeadRms;
  }
  return absl::OkStatus();
}

absl::Status ParseOlmoe(const Fields& f, ModelConfig* config) {
  // OLMoE has no head_dim field: q_norm is sized hidden_size, so head_dim = hidden / heads.
  config->head_dim = config->hidden_size / config->num_attention_heads;
  SY_ASSIGN_OR_RETURN(config->moe_intermediate_size, f.Int("intermediate_size"));
  SY_RETURN_IF_ERROR(RequirePositive(f, "intermediate_size", config->moe_intermediate_size));
  SY_RETURN_IF_ERROR(ParseExperts(f, "num_experts", config));
  SY_RETURN_IF_ERROR(RequirePositive(f, "num_experts", config->num_experts));
  SY_ASSIGN_OR_RETURN(config->norm_topk_prob, f.BoolOr("norm_topk_prob", false));
  SY_ASSIGN_OR_RETURN(config->attention_bias, f.BoolOr("attention_bias", false));
  config->o_proj_bias = config->attention_bias;
  SY_ASSIGN_OR_RETURN(config->clip_qkv, f.DoubleOr("clip_qkv", 0.0));
  if (config->clip_qkv < 0.0) {
    return f.Bad("clip_qkv", "a positive number or null", *f.Get("clip_qkv"));
  }
  config->qk_norm = QkNorm::kFlatRms;
  config->expert_layout = ExpertLayout::kPerExpertMlp;
  config->layer_is_moe.assign(config->num_hidden_layers, true);
  return absl::OkStatus();
}

absl::Status ParseLlama4Layers(const Fields& f, ModelConfig* config) {
  const int64_t num_layers = config->num_hidden_layers;
  SY_ASSIGN_OR_RETURN(std::vector<int64_t> no_rope, f.IntList("no_rope_layers"));
  if (no_rope.empty()) {  // transformers: a NoPE layer every no_rope_layer_interval layers
    SY_ASSIGN_OR_RETURN(int64_t interval, f.IntOr("no_rope_layer_interval", 4));
    SY_RETURN_IF_ERROR(RequirePositive(f, "no_rope_layer_interval", interval));
    for (int64_t i = 0; i < num_layers; ++i) no_rope.push_back((i + 1) % interval != 0 ? 1 : 0);
  }
  if (static_cast<int64_t>(no_rope.size()) < num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json field '", f.Path("no_rope_layers"), "': expected at least ",
                     num_layers, " entries (num_hidden_layers), found ", no_rope.size()));
  }
  config->layer_uses_rope.assign(num_layers, true);
  for (int64_t i = 0; i < num_layers; ++i) config->layer_uses_rope[i] = no_rope[i] != 0;

  config->layer_is_moe.assign(num_layers, false);
  if (f.Has("moe_layers")) {
    SY_ASSIGN_OR_RETURN(std::vector<int64_t> moe_layers, f.IntList("moe_layers"));
    for (int64_t i : moe_layers) {
      if (i >= 0 && i < num_layers) config->layer_is_moe[i] = true;
    }
  } else {
    SY_ASSIGN_OR_RETURN(int64_t step, f.IntOr("interleave_moe_layer_step", 1));
    SY_RETURN_IF_ERROR(RequirePositive(f, "interleave_moe_layer_step", step));
    for (int64_t i = step - 1; i < num_layers; i += step) config->layer_is_moe[i] = true;
  }
  return absl::OkStatus();
}

absl::Status ParseLlama4(const Fields& f, ModelConfig* config) {
  // Llama4TextConfig's head_dim defaults to 128; only an explicit null derives it.
  SY_ASSIGN_OR_RETURN(
      config->head_dim,
      f.IntOr("head_dim",
              f.Contains("head_dim") ? config->hidden_size / config->num_attention_heads : 128));
  SY_RETURN_IF_ERROR(RequirePositive(f, "head_dim", config->head_dim));
  SY_ASSIGN_OR_RETURN(config->moe_intermediate_size, f.Int("intermediate_size"));
  SY_RETURN_IF_ERROR(RequirePositive(f, "intermediate_size", config->moe_intermediate_size));
  config->shared_expert_intermediate_size = config->moe_intermediate_size;
  SY_RETURN_IF_ERROR(ParseExperts(f, "num_local_experts", config));
  SY_RETURN_IF_ERROR(RequirePositive(f, "num_local_experts", config->num_experts));
  SY_RETURN_IF_ERROR(ParseLlama4Layers(f, config));
  if (config->num_moe_layers() < config->num_hidden_layers) {
    SY_ASSIGN_OR_RETURN(config->intermediate_size, f.Int("intermediate_size_mlp"));
    SY_RETURN_IF_ERROR(RequirePositive(f, "intermediate_size_mlp", config->intermediate_size));
  } else {
    SY_ASSIGN_OR_RETURN(config->intermediate_size, f.IntOr("intermediate_size_mlp", 0));
  }
  SY_ASSIGN_OR_RETURN(config->attention_bias, f.BoolOr("attention_bias", false));
  config->o_proj_bias = config->attention_bias;
  SY_ASSIGN_OR_RETURN(bool qk_norm, f.BoolOr("use_qk_norm", true));
  config->qk_norm = qk_norm ? QkNorm::kL2 : QkNorm::kNone;
  // Absent takes the class default (8192); null disables chunking.
  SY_ASSIGN_OR_RETURN(
      config->attention_chunk_size,
      f.IntOr("attention_chunk_size", f.Contains("attention_chunk_size") ? 0 : 8192));
  if (config->attention_chunk_size < 0) {
    return f.Bad("attention_chunk_size", "a positive integer or null",
                 *f.Get("attention_chunk_size"));
  }
  // Released configs write attn_temperature_tuning as an integer (4): any non-zero is true.
  if (const Json* tuning = f.Get("attn_temperature_tuning"); tuning != nullptr) {
    if (tuning->is_boolean()) {
      config->attn_temperature_tuning = tuning->get<bool>();
    } else if (tuning->is_number()) {
      config->attn_temperature_tuning = tuning->get<double>() != 0.0;
    } else {
      return f.Bad("attn_temperature_tuning", "a boolean", *tuning);
    }
  } else {
    config->attn_temperature_tuning = true;
  }
  SY_ASSIGN_OR_RETURN(config->floor_scale, f.DoubleOr("floor_scale", 8192.0));
  SY_ASSIGN_OR_RETURN(config->attn_scale, f.DoubleOr("attn_scale", 0.1));
  if (config->attn_temperature_tuning && !(config->floor_scale > 0.0)) {
    return absl::InvalidArgumentError("config.json field 'floor_scale': expected > 0");
  }
  config->rope_style = RopeStyle::kInterleaved;
  config->router_scoring = RouterScoring::kSigmoidTopK;
  config->router_scales_input = true;
  config->norm_topk_prob = false;
  config->expert_layout = ExpertLayout::kLlama4Fused;
  return absl::OkStatus();
}

absl::Status ParseFamily(const Fields& f, ModelConfig* config) {
  SY_RETURN_IF_ERROR(ParseCommon(f, config));
  switch (config->family) {
    case ModelFamily::kLlama:
      SY_RETURN_IF_ERROR(ParseLlama(f, config));
      break;
    case ModelFamily::kMixtral:
      SY_RETURN_IF_ERROR(ParseMixtral(f, config));
      break;
    case ModelFamily::kQwen2Moe:
    case ModelFamily::kQwen3Moe:
      SY_RETURN_IF_ERROR(ParseQwenMoe(f, config));
      break;
    case ModelFamily::kOlmoe:
      SY_RETURN_IF_ERROR(ParseOlmoe(f, config));
      break;
    case ModelFamily::kLlama4:
      SY_RETURN_IF_ERROR(ParseLlama4(f, config));
      break;
  }
  if (config->layer_uses_rope.empty()) {
    config->layer_uses_rope.assign(config->num_hidden_layers, true);
  }
  if (config->tie_word_embeddings) config->lm_head_name.clear();
  return absl::OkStatus();
}

}  // namespace

std::string_view ModelFamilyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kLlama:
      return "llama";
    case ModelFamily::kMixtral:
      return "mixtral";
    case ModelFamily::kQwen2Moe:
      return "qwen2_moe";
    case ModelFamily::kQwen3Moe:
      return "qwen3_moe";
    case ModelFamily::kOlmoe:
      return "olmoe";
    case ModelFamily::kLlama4:
      return "llama4";
  }
  return "unknown";
}

absl::StatusOr<ModelFamily> ModelFamilyFromType(std::string_view model_type) {
  for (ModelFamily family : {ModelFamily::kLlama, ModelFamily::kMixtral, ModelFamily::kQwen2Moe,
                             ModelFamily::kQwen3Moe, ModelFamily::kOlmoe, ModelFamily::kLlama4}) {
    if (model_type == ModelFamilyName(family)) return family;
  }
  if (model_type == "llama4_text") return ModelFamily::kLlama4;
  std::string why;
  if (model_type.substr(0, 8) == "deepseek")
    why = " (multi-head latent attention is not supported)";
  return absl::UnimplementedError(absl::StrCat(
      "config.json: model_type '", std::string(model_type), "' is not supported", why,
      "; supported: llama, mixtral, qwen2_moe, qwen3_moe, olmoe, llama4, llama4_text"));
}

int64_t ModelConfig::num_moe_layers() const {
  return std::count(layer_is_moe.begin(), layer_is_moe.end(), true);
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view config_json) {
  Json root = Json::parse(config_json.begin(), config_json.end(), nullptr,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: expected a JSON object, found ", Found(root)));
  }
  Fields top(root, "");
  if (!top.Has("model_type")) {
    return absl::InvalidArgumentError("config.json: required field 'model_type' is missing");
  }
  ModelConfig config;
  SY_ASSIGN_OR_RETURN(config.model_type, top.StringOr("model_type", ""));
  SY_ASSIGN_OR_RETURN(config.family, ModelFamilyFromType(config.model_type));
  if (config.model_type != "llama4") {
    SY_RETURN_IF_ERROR(ParseFamily(top, &config));
    return config;
  }
  // Llama4ForConditionalGeneration: the text model's config is nested; its tensors live under
  // "language_model." beside the vision tower's, which the text engine does not use.
  const Json* text = top.Get("text_config");
  if (text == nullptr || !text->is_object()) {
    return absl::InvalidArgumentError(
        "config.json: model_type 'llama4' needs a 'text_config' object");
  }
  Fields nested(*text, "text_config.");
  config.lm_head_name = "language_model.lm_head.weight";
  SY_RETURN_IF_ERROR(ParseFamily(nested, &config));
  if (!nested.Has("tie_word_embeddings")) {
    SY_ASSIGN_OR_RETURN(config.tie_word_embeddings, top.BoolOr("tie_word_embeddings", false));
    if (config.tie_word_embeddings) config.lm_head_name.clear();
  }
  if (!nested.Contains("eos_token_id") && top.Contains("eos_token_id")) {
    SY_RETURN_IF_ERROR(ParseTokenIds(top, DefaultsOf(config.family), &config));
  }
  config.tensor_prefix = "language_model.model.";
  config.ignored_tensor_prefixes = {"vision_model.", "multi_modal_projector."};
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path.string(), ": ", config.status().message()));
  }
  return config;
}

}  // namespace switchyard
