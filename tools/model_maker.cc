#include "tools/model_maker.h"

#include <cmath>
#include <fstream>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model_config.h"
#include "common/status_macros.h"
#include "common/tensor_names.h"
#include "common/tokenizer_maker.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using Json = nlohmann::json;

constexpr char kTransformersVersion[] = "4.51.3";

std::string TorchDtype(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    default:
      return "float32";
  }
}

Json EosJson(const std::vector<int64_t>& eos) {
  if (eos.size() == 1) return eos[0];
  return eos;
}

Json IdOrNull(int64_t id) { return id >= 0 ? Json(id) : Json(nullptr); }

// Fields every family's config class has, with the values our toy models use.
Json CommonConfig(const MakeModelOptions& o, const MadeTokenizer& tok) {
  return Json{{"attention_dropout", 0.0},
              {"bos_token_id", IdOrNull(tok.bos_token_id)},
              {"eos_token_id", EosJson(tok.eos_token_ids)},
              {"hidden_act", "silu"},
              {"hidden_size", o.hidden_size},
              {"initializer_range", 0.02},
              {"max_position_embeddings", 256},
              {"num_attention_heads", o.num_heads},
              {"num_hidden_layers", o.num_layers},
              {"num_key_value_heads", o.num_kv_heads},
              {"rms_norm_eps", 1e-5},
              {"tie_word_embeddings", o.tie_embeddings},
              {"torch_dtype", TorchDtype(o.dtype)},
              {"transformers_version", kTransformersVersion},
              {"use_cache", true},
              {"vocab_size", o.vocab_size}};
}

void AddMoeCommon(const MakeModelOptions& o, Json* c) {
  (*c)["num_experts_per_tok"] = o.top_k;
  (*c)["output_router_logits"] = false;
  (*c)["router_aux_loss_coef"] = 0.001;
}

Json LlamaConfig(const MakeModelOptions& o, Json c) {
  c["architectures"] = {"LlamaForCausalLM"};
  c["model_type"] = "llama";
  c["attention_bias"] = false;
  c["mlp_bias"] = false;
  c["head_dim"] = o.head_dim;
  c["intermediate_size"] = o.intermediate_size;
  c["pretraining_tp"] = 1;
  // Short original context so that the llama3 scaling leaves some frequencies alone, scales
  // some and smooths one in between (head_dim 16, theta 10000: wavelengths 6.3, 19.9, 62.8, ...).
  c["rope_scaling"] = {{"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 32},
                       {"rope_type", "llama3"}};
  c["rope_theta"] = 10000.0;
  return c;
}

Json MixtralConfig(const MakeModelOptions& o, Json c) {
  c["architectures"] = {"MixtralForCausalLM"};
  c["model_type"] = "mixtral";
  c["head_dim"] = o.head_dim;
  c["intermediate_size"] = o.moe_intermediate_size;
  c["num_local_experts"] = o.num_experts;
  AddMoeCommon(o, &c);
  c["router_aux_loss_coef"] = 0.02;
  c["router_jitter_noise"] = 0.0;
  c["rope_theta"] = 1e6;
  c["sliding_window"] = nullptr;
  return c;
}

Json QwenMoeConfig(const MakeModelOptions& o, bool qwen3, Json c) {
  c["architectures"] = {qwen3 ? "Qwen3MoeForCausalLM" : "Qwen2MoeForCausalLM"};
  c["model_type"] = qwen3 ? "qwen3_moe" : "qwen2_moe";
  c["decoder_sparse_step"] = 1;
  c["intermediate_size"] = o.intermediate_size;
  c["max_window_layers"] = o.num_layers;
  // Qwen2-MoE: layer 1 is a dense MLP, as a model with mlp_only_layers would have.
  c["mlp_only_layers"] = qwen3 || o.num_layers < 2 ? Json::array() : Json::array({1});
  c["moe_intermediate_size"] = o.moe_intermediate_size;
  c["norm_topk_prob"] = qwen3;  // as in Qwen3-30B-A3B and Qwen1.5-MoE-A2.7B
  c["num_experts"] = o.num_experts;
  AddMoeCommon(o, &c);
  c["rms_norm_eps"] = 1e-6;
  c["rope_scaling"] = nullptr;
  c["rope_theta"] = 1e6;
  c["sliding_window"] = qwen3 ? Json(nullptr) : Json(4096);
  c["use_sliding_window"] = false;
  if (qwen3) {
    c["attention_bias"] = false;
    c["head_dim"] = o.head_dim;
  } else {
    c["shared_expert_intermediate_size"] = o.shared_expert_size;
  }
  return c;
}

Json OlmoeConfig(const MakeModelOptions& o, Json c) {
  c["architectures"] = {"OlmoeForCausalLM"};
  c["model_type"] = "olmoe";
  c["attention_bias"] = false;
  c["clip_qkv"] = 2.0;  // q/k/v have rms ~1 here, so some entries are clipped
  c["intermediate_size"] = o.moe_intermediate_size;
  c["norm_topk_prob"] = false;
  c["num_experts"] = o.num_experts;
  AddMoeCommon(o, &c);
  c["router_aux_loss_coef"] = 0.01;
  c["pad_token_id"] = nullptr;
  c["rope_scaling"] = nullptr;
  c["rope_theta"] = 10000.0;
  return c;
}

Json Llama4TextConfig(const MakeModelOptions& o, Json c) {
  c["architectures"] = {"Llama4ForCausalLM"};
  c["model_type"] = "llama4_text";
  c["attention_bias"] = false;
  c["attention_chunk_size"] = 8;
  c["attn_scale"] = 0.1;
  c["attn_temperature_tuning"] = true;
  c["floor_scale"] = 4;  // small, so temperature tuning changes q within short prompts
  c["head_dim"] = o.head_dim;
  c["interleave_moe_layer_step"] = 2;
  c["intermediate_size"] = o.moe_intermediate_size;
  c["intermediate_size_mlp"] = o.intermediate_size;
  Json moe_layers = Json::array();
  Json no_rope_layers = Json::array();
  for (int64_t i = 0; i < o.num_layers; ++i) {
    if (i % 2 == 1) moe_layers.push_back(i);
    no_rope_layers.push_back((i + 1) % 4 != 0 ? 1 : 0);  // layer 3 of 4 is NoPE
  }
  c["moe_layers"] = moe_layers;
  c["no_rope_layers"] = no_rope_layers;
  c["num_local_experts"] = o.num_experts;
  AddMoeCommon(o, &c);
  c["router_jitter_noise"] = 0.0;
  c["rope_scaling"] = {{"factor", 16.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 1.0},
                       {"original_max_position_embeddings", 32},
                       {"rope_type", "llama3"}};  // as Llama-4-Scout, with a short context
  c["rope_theta"] = 500000.0;
  c["use_qk_norm"] = true;
  return c;
}

// A small vision tower description: the text engine ignores it, but a real Llama 4 config has one.
Json Llama4VisionConfig() {
  return Json{{"attention_dropout", 0.0},
              {"hidden_act", "gelu"},
              {"hidden_size", 32},
              {"image_size", 28},
              {"initializer_range", 0.02},
              {"intermediate_size", 64},
              {"model_type", "llama4_vision_model"},
              {"multi_modal_projector_bias", false},
              {"norm_eps", 1e-5},
              {"num_attention_heads", 2},
              {"num_channels", 3},
              {"num_hidden_layers", 1},
              {"patch_size", 14},
              {"pixel_shuffle_ratio", 0.5},
              {"projector_dropout", 0.0},
              {"projector_input_dim", 32},
              {"projector_output_dim", 32},
              {"rope_theta", 10000},
              {"vision_feature_layer", -1},
              {"vision_feature_select_strategy", "default"},
              {"vision_output_dim", 32}};
}

absl::StatusOr<Json> BuildConfig(const MakeModelOptions& o, const MadeTokenizer& tok) {
  Json c = CommonConfig(o, tok);
  const std::string& f = o.family;
  if (f == "llama") return LlamaConfig(o, std::move(c));
  if (f == "mixtral") return MixtralConfig(o, std::move(c));
  if (f == "qwen2_moe" || f == "qwen3_moe") return QwenMoeConfig(o, f == "qwen3_moe", std::move(c));
  if (f == "olmoe") return OlmoeConfig(o, std::move(c));
  if (f == "llama4_text") return Llama4TextConfig(o, std::move(c));
  if (f == "llama4") {
    Json text = Llama4TextConfig(o, std::move(c));
    text.erase("architectures");
    text.erase("transformers_version");
    return Json{{"architectures", {"Llama4ForConditionalGeneration"}},
                {"boi_token_index", 200080},
                {"eoi_token_index", 200081},
                {"image_token_index", 200092},
                {"model_type", "llama4"},
                {"text_config", text},
                {"tie_word_embeddings", o.tie_embeddings},
                {"torch_dtype", TorchDtype(o.dtype)},
                {"transformers_version", kTransformersVersion},
                {"vision_config", Llama4VisionConfig()}};
  }
  return ModelFamilyFromType(f).status();
}

// ----------------------------------------------------------------------------- weights

// SplitMix64: tiny, and the same on every platform (std distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1).
  float Symmetric() { return static_cast<float>(Next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }

 private:
  uint64_t state_;
};

uint64_t HashName(const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), std::string(suffix)) == 0;
}

// Values with a spread that keeps logits peaked: std 1/sqrt(fan_in) for projections (so
// activations keep unit scale), ~1 for embeddings, 1 +- 0.2 for norm weights.
std::vector<float> RandomValues(const std::string& name, const std::vector<int64_t>& shape,
                                uint64_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  Rng rng(seed ^ HashName(name));
  std::vector<float> values(n);
  const bool norm = shape.size() == 1 && EndsWith(name, "norm.weight");
  float center = norm ? 1.0f : 0.0f;
  float half_width;  // uniform [-w, w] has std w / sqrt(3)
  if (norm) {
    half_width = 0.2f;
  } else if (shape.size() == 1) {
    half_width = 0.1f * std::sqrt(3.0f);  // biases
  } else if (EndsWith(name, "embed_tokens.weight") || shape.size() < 2) {
    half_width = std::sqrt(3.0f);
  } else {
    const float gain = EndsWith(name, "lm_head.weight") ? 2.0f : 1.0f;
    half_width = gain * std::sqrt(3.0f / static_cast<float>(shape[1]));
  }
  for (float& v : values) v = center + half_width * rng.Symmetric();
  return values;
}

std::vector<TensorToWrite> AllTensors(const MakeModelOptions& o, const ModelConfig& config) {
  std::vector<TensorSpec> specs = ExpectedTensors(config);
  if (o.family == "llama4") {  // stand-ins for the vision tower, which the text engine skips
    specs.push_back({"multi_modal_projector.linear_1.weight", {o.hidden_size, 32}});
    specs.push_back({"vision_model.class_embedding", {32}});
  }
  std::vector<TensorToWrite> tensors;
  for (TensorSpec& spec : specs) {
    std::vector<float> values = RandomValues(spec.name, spec.shape, o.seed);
    tensors.push_back({spec.name, o.dtype, std::move(spec.shape), std::move(values)});
  }
  return tensors;
}

absl::Status WriteText(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

// model.safetensors, or N shards of about equal size plus the index transformers writes.
absl::Status WriteWeights(const MakeModelOptions& o, std::vector<TensorToWrite> tensors) {
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (o.num_shards == 1)
    return WriteSafetensors(o.out_dir / "model.safetensors", tensors, metadata);
  int64_t total_bytes = 0;
  for (const TensorToWrite& t : tensors) total_bytes += t.values.size() * DTypeSize(t.dtype);
  const int64_t num_shards = std::min<int64_t>(o.num_shards, tensors.size());
  Json weight_map = Json::object();
  size_t next = 0;
  int64_t written_bytes = 0;
  for (int64_t shard_idx = 0; shard_idx < num_shards; ++shard_idx) {
    const std::string file =
        absl::StrFormat("model-%05d-of-%05d.safetensors", shard_idx + 1, num_shards);
    const int64_t target_bytes = total_bytes * (shard_idx + 1) / num_shards;
    const size_t left_for_later = num_shards - shard_idx - 1;
    std::vector<TensorToWrite> shard;
    while (next < tensors.size() - left_for_later &&
           (shard.empty() || written_bytes < target_bytes || shard_idx + 1 == num_shards)) {
      written_bytes += tensors[next].values.size() * DTypeSize(tensors[next].dtype);
      weight_map[tensors[next].name] = file;
      shard.push_back(std::move(tensors[next++]));
    }
    SY_RETURN_IF_ERROR(WriteSafetensors(o.out_dir / file, shard, metadata));
  }
  Json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  return WriteText(o.out_dir / "model.safetensors.index.json", index.dump(2) + "\n");
}

absl::Status CheckOptions(const MakeModelOptions& o) {
  for (auto [name, value] : {std::pair{"--layers", o.num_layers},
                             {"--hidden-size", o.hidden_size},
                             {"--intermediate-size", o.intermediate_size},
                             {"--moe-intermediate-size", o.moe_intermediate_size},
                             {"--experts", o.num_experts},
                             {"--top-k", o.top_k},
                             {"--heads", o.num_heads},
                             {"--kv-heads", o.num_kv_heads},
                             {"--head-dim", o.head_dim},
                             {"--vocab-size", o.vocab_size},
                             {"--shared-expert-size", o.shared_expert_size},
                             {"--shards", o.num_shards}}) {
    if (value < 1) return absl::InvalidArgumentError(absl::StrCat(name, " must be >= 1"));
  }
  if (o.out_dir.empty()) return absl::InvalidArgumentError("--out is required");
  if (o.family != "llama" && o.top_k > o.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("--top-k ", o.top_k, " exceeds --experts ", o.num_experts));
  }
  if (o.num_heads % o.num_kv_heads != 0) {
    return absl::InvalidArgumentError("--heads must be a multiple of --kv-heads");
  }
  // These families derive head_dim from hidden_size / heads; there is no field for another value.
  if ((o.family == "qwen2_moe" || o.family == "olmoe") &&
      o.head_dim * o.num_heads != o.hidden_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.family, " needs --head-dim * --heads == --hidden-size, got ", o.head_dim,
                     " * ", o.num_heads, " != ", o.hidden_size));
  }
  if (o.head_dim % 2 != 0) return absl::InvalidArgumentError("--head-dim must be even (RoPE)");
  return absl::OkStatus();
}

}  // namespace

absl::Status MakeModel(const MakeModelOptions& options) {
  MakeModelOptions o = options;
  if (o.top_k == 0) o.top_k = o.family == "llama4" || o.family == "llama4_text" ? 1 : 2;
  if (o.head_dim == 0) o.head_dim = o.family == "qwen3_moe" ? 32 : o.hidden_size / o.num_heads;
  SY_ASSIGN_OR_RETURN(ModelFamily family, ModelFamilyFromType(o.family));
  SY_RETURN_IF_ERROR(CheckOptions(o));
  SY_ASSIGN_OR_RETURN(MadeTokenizer tokenizer, MakeTokenizer(family, o.vocab_size));
  if (tokenizer.vocab_size != o.vocab_size) {
    return absl::InternalError(absl::StrCat("MakeTokenizer made ", tokenizer.vocab_size,
                                            " ids, asked for ", o.vocab_size));
  }
  SY_ASSIGN_OR_RETURN(Json config_json, BuildConfig(o, tokenizer));
  const std::string config_text = config_json.dump(2) + "\n";
  // Parse what we wrote: the tensor list comes from the same code the engine uses.
  SY_ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_text));

  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(o.out_dir.string(), ": ", ec.message()));
  for (const auto& entry : std::filesystem::directory_iterator(o.out_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("model", 0) == 0 &&
        (EndsWith(name, ".safetensors") || name == "model.safetensors.index.json")) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
  SY_RETURN_IF_ERROR(WriteText(o.out_dir / "config.json", config_text));
  Json generation = {{"_from_model_config", true},
                     {"bos_token_id", IdOrNull(tokenizer.bos_token_id)},
                     {"eos_token_id", EosJson(tokenizer.eos_token_ids)},
                     {"transformers_version", kTransformersVersion}};
  SY_RETURN_IF_ERROR(WriteText(o.out_dir / "generation_config.json", generation.dump(2) + "\n"));
  SY_RETURN_IF_ERROR(WriteText(o.out_dir / "tokenizer.json", tokenizer.json));
  SY_RETURN_IF_ERROR(
      WriteText(o.out_dir / "tokenizer_config.json", tokenizer.tokenizer_config_json));
  return WriteWeights(o, AllTensors(o, config));
}

std::string MakeModelUsage() {
  return "usage: switchyard-make-model --family "
         "<llama|mixtral|qwen2_moe|qwen3_moe|olmoe|llama4|llama4_text> --out DIR\n"
         "  [--layers N] [--hidden-size N] [--intermediate-size N] [--moe-intermediate-size N]\n"
         "  [--experts N] [--top-k N] [--heads N] [--kv-heads N] [--head-dim N]\n"
         "  [--vocab-size N] [--shared-expert-size N] [--dtype f32|bf16|f16] [--shards N]\n"
         "  [--seed N] [--tie-embeddings]\n";
}

absl::StatusOr<MakeModelOptions> ParseMakeModelArgs(const std::vector<std::string>& args) {
  MakeModelOptions o;
  const std::map<std::string, int64_t*> ints = {{"layers", &o.num_layers},
                                                {"hidden-size", &o.hidden_size},
                                                {"intermediate-size", &o.intermediate_size},
                                                {"moe-intermediate-size", &o.moe_intermediate_size},
                                                {"experts", &o.num_experts},
                                                {"top-k", &o.top_k},
                                                {"heads", &o.num_heads},
                                                {"kv-heads", &o.num_kv_heads},
                                                {"head-dim", &o.head_dim},
                                                {"vocab-size", &o.vocab_size},
                                                {"shared-expert-size", &o.shared_expert_size},
                                                {"shards", &o.num_shards}};
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg.rfind("--", 0) != 0) return absl::InvalidArgumentError("unexpected argument " + arg);
    std::string name = arg.substr(2), value;
    for (char& ch : name) ch = ch == '_' ? '-' : ch;
    const size_t eq = name.find('=');
    const bool has_value = eq != std::string::npos;
    if (has_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (name == "tie-embeddings") {
      o.tie_embeddings = !has_value || value == "true" || value == "1";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError("--" + name + " needs a value");
      value = args[++i];
    }
    if (auto it = ints.find(name); it != ints.end()) {
      if (!absl::SimpleAtoi(value, it->second)) {
        return absl::InvalidArgumentError("--" + name + ": expected an integer, found " + value);
      }
    } else if (name == "seed") {
      if (!absl::SimpleAtoi(value, &o.seed)) {
        return absl::InvalidArgumentError("--seed: expected an integer, found " + value);
      }
    } else if (name == "family") {
      o.family = value;
    } else if (name == "out") {
      o.out_dir = value;
    } else if (name == "dtype") {
      if (value == "f32" || value == "float32")
        o.dtype = DType::kF32;
      else if (value == "bf16" || value == "bfloat16")
        o.dtype = DType::kBF16;
      else if (value == "f16" || value == "float16")
        o.dtype = DType::kF16;
      else
        return absl::InvalidArgumentError("--dtype: expected f32, bf16 or f16, found " + value);
    } else {
      return absl::InvalidArgumentError("unknown flag --" + name);
    }
  }
  return o;
}

}  // namespace switchyard
