// switchyard-run: runs the engine in one process on a checkpoint directory and streams the text.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/flags.h"
#include "common/cli_support.h"
#include "common/logging.h"
#include "common/tokenizer.h"
#include "worker/engine.h"
#include "worker/generator.h"

ABSL_FLAG(std::string, model, "", "Hugging Face checkpoint directory (config.json, *.safetensors)");
ABSL_FLAG(std::string, prompt, "", "prompt text (encoded with the model's tokenizer.json)");
ABSL_FLAG(std::string, prompt_ids, "", "prompt token ids, comma-separated, used exactly as given");
ABSL_FLAG(int64_t, max_tokens, 64, "maximum tokens to generate");
ABSL_FLAG(int64_t, min_tokens, 0, "generate at least this many tokens before stopping");
ABSL_FLAG(double, temperature, 1.0, "sampling temperature; 0 = greedy");
ABSL_FLAG(double, top_p, 1.0, "nucleus sampling mass, (0, 1]");
ABSL_FLAG(int32_t, top_k, 0, "keep the k most likely tokens; 0 = all");
ABSL_FLAG(double, min_p, 0.0, "drop tokens below min_p * p(most likely)");
ABSL_FLAG(double, repetition_penalty, 1.0, "penalty for tokens seen in prompt or output (> 0)");
ABSL_FLAG(double, presence_penalty, 0.0, "penalty for tokens present in the output, [-2, 2]");
ABSL_FLAG(double, frequency_penalty, 0.0, "penalty per occurrence in the output, [-2, 2]");
ABSL_FLAG(int64_t, seed, -1, "sampling seed; -1 = random");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings, comma-separated");
ABSL_FLAG(std::string, stop_token_ids, "", "stop token ids, comma-separated");
ABSL_FLAG(bool, ignore_eos, false, "keep generating after the end-of-sequence token");
ABSL_FLAG(std::string, logits_out, "", "write every prompt position's logits here (float32 LE, [num_prompt, vocab])");
ABSL_FLAG(std::string, ids_out, "", "write the generated token ids here, comma-separated");
ABSL_FLAG(std::string, backend, "cpu", "compute backend: cpu, cuda or auto");
ABSL_FLAG(int64_t, kv_cache_mb, 256, "KV cache size in MiB");
ABSL_FLAG(int64_t, block_size, 16, "tokens per KV block");
ABSL_FLAG(int64_t, prefill_chunk, 512, "prompt tokens per forward step");
ABSL_FLAG(bool, stats, false, "print timing to stderr");
ABSL_FLAG(std::string, log_level, "warn", "trace, debug, info, warn, error, off");

namespace switchyard {
namespace {

absl::Status WriteFile(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), bytes);
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<GenerationRequest> BuildRequest(const Engine& engine, const Tokenizer* tokenizer) {
  GenerationRequest request;
  const std::string prompt = absl::GetFlag(FLAGS_prompt), prompt_ids = absl::GetFlag(FLAGS_prompt_ids);
  if (prompt.empty() == prompt_ids.empty()) {
    return absl::InvalidArgumentError("give exactly one of --prompt and --prompt-ids");
  }
  if (!prompt_ids.empty()) {
    SY_ASSIGN_OR_RETURN(request.prompt_ids, ParseIdList(prompt_ids, "--prompt-ids"));
  } else {
    if (tokenizer == nullptr) return absl::FailedPreconditionError("--prompt needs tokenizer.json in the model directory");
    SY_ASSIGN_OR_RETURN(request.prompt_ids, tokenizer->Encode(prompt));
  }
  SamplingParams& s = request.sampling;
  s.temperature = absl::GetFlag(FLAGS_temperature);
  s.top_p = absl::GetFlag(FLAGS_top_p);
  s.top_k = absl::GetFlag(FLAGS_top_k);
  s.min_p = absl::GetFlag(FLAGS_min_p);
  s.repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty);
  s.presence_penalty = absl::GetFlag(FLAGS_presence_penalty);
  s.frequency_penalty = absl::GetFlag(FLAGS_frequency_penalty);
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    s.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
    s.has_seed = true;
  }
  StopConfig& stop = request.stop;
  stop.stop_strings = absl::GetFlag(FLAGS_stop);
  SY_ASSIGN_OR_RETURN(stop.stop_token_ids, ParseIdList(absl::GetFlag(FLAGS_stop_token_ids), "--stop-token-ids"));
  for (int64_t id : engine.config().eos_token_ids) stop.eos_token_ids.push_back(static_cast<int32_t>(id));
  stop.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  stop.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  stop.min_tokens = absl::GetFlag(FLAGS_min_tokens);
  request.return_prompt_logits = !absl::GetFlag(FLAGS_logits_out).empty();
  request.prefill_chunk_tokens = absl::GetFlag(FLAGS_prefill_chunk);
  return request;
}

absl::Status Run() {
  SY_RETURN_IF_ERROR(SetLogLevel(absl::GetFlag(FLAGS_log_level)));
  const std::filesystem::path model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  SY_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, MakeBackend(absl::GetFlag(FLAGS_backend)));
  EngineOptions options;
  options.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_mb) << 20;
  options.block_size = absl::GetFlag(FLAGS_block_size);
  SY_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Load(model_dir, std::move(backend), options));
  std::unique_ptr<Tokenizer> tokenizer;
  if (std::filesystem::exists(model_dir / "tokenizer.json")) {
    SY_ASSIGN_OR_RETURN(tokenizer, Tokenizer::FromFile(model_dir / "tokenizer.json"));
  }
  SY_ASSIGN_OR_RETURN(GenerationRequest request, BuildRequest(*engine, tokenizer.get()));
  Generator generator(*engine, tokenizer.get());
  SY_ASSIGN_OR_RETURN(GenerationResult result, generator.Generate(request, [](std::string_view text) {
    std::cout << text << std::flush;
  }));
  std::cout << std::endl;
  if (!absl::GetFlag(FLAGS_logits_out).empty()) {
    SY_RETURN_IF_ERROR(WriteFile(absl::GetFlag(FLAGS_logits_out), result.prompt_logits.data(),
                                 result.prompt_logits.size() * sizeof(float)));
  }
  if (!absl::GetFlag(FLAGS_ids_out).empty()) {
    const std::string ids = absl::StrJoin(result.output_ids, ",") + "\n";
    SY_RETURN_IF_ERROR(WriteFile(absl::GetFlag(FLAGS_ids_out), ids.data(), ids.size()));
  }
  if (absl::GetFlag(FLAGS_stats)) {
    const double prompt_tps = request.prompt_ids.size() / std::max(result.prefill_seconds, 1e-9);
    const double decode_tps = (result.output_ids.size() - 1) / std::max(result.decode_seconds, 1e-9);
    std::fprintf(stderr, "prompt %zu tokens, %.1f tok/s; generated %zu tokens, %.1f tok/s\n",
                 request.prompt_ids.size(), prompt_tps, result.output_ids.size(), decode_tps);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace switchyard

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "switchyard-run --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N] "
      "[--temperature T --top-p P --top-k K --seed S] [--logits-out FILE] [--ids-out FILE]");
  switchyard::ParseFlagsWithEnv(argc, argv);
  switchyard::InitLogging("switchyard-run");
  absl::Status status = switchyard::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "switchyard-run: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
