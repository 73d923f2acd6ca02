#include "worker/generator.h"

#include <chrono>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Generator::Generator(Engine& engine, const Tokenizer* tokenizer)
    : engine_(engine),
      tokenizer_(tokenizer),
      blocks_(engine.num_kv_blocks()),
      sampler_(engine.config().vocab_size) {}

absl::Status Generator::Validate(const GenerationRequest& request) const {
  const ModelConfig& config = engine_.config();
  if (request.prompt_ids.empty()) {
    return absl::InvalidArgumentError("prompt: expected at least one token, found none");
  }
  for (size_t i = 0; i < request.prompt_ids.size(); ++i) {
    const int32_t id = request.prompt_ids[i];
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, ": id ", id,
                                                     " outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  const int64_t total = static_cast<int64_t>(request.prompt_ids.size()) + request.stop.max_tokens;
  if (config.max_position_embeddings > 0 && total > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", request.prompt_ids.size(), " tokens) + max_tokens (", request.stop.max_tokens,
        ") = ", total, " exceeds the model's context of ", config.max_position_embeddings));
  }
  if (tokenizer_ == nullptr && !request.stop.stop_strings.empty()) {
    return absl::InvalidArgumentError("stop strings need a tokenizer; none is loaded");
  }
  if (request.prefill_chunk_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_chunk_tokens: expected >= 1, found ",
                                                   request.prefill_chunk_tokens));
  }
  return ValidateSamplingParams(request.sampling, config.vocab_size);
}

absl::Status Generator::EnsureBlocks(int64_t num_tokens, std::vector<int32_t>* blocks) {
  const int64_t needed = (num_tokens + engine_.block_size() - 1) / engine_.block_size();
  const int64_t missing = needed - static_cast<int64_t>(blocks->size());
  if (missing <= 0) return absl::OkStatus();
  SY_ASSIGN_OR_RETURN(std::vector<int32_t> more, blocks_.Allocate(missing));
  blocks->insert(blocks->end(), more.begin(), more.end());
  return absl::OkStatus();
}

absl::StatusOr<GenerationResult> Generator::Generate(const GenerationRequest& request,
                                                     const TextCallback& on_text) {
  SY_RETURN_IF_ERROR(Validate(request));
  SY_ASSIGN_OR_RETURN(StopChecker checker, StopChecker::Create(request.stop));
  SamplingParams sampling = request.sampling;
  if (!sampling.has_seed) sampling.seed = std::random_device{}() * 0x9E3779B97F4A7C15ull;

  std::vector<int32_t> blocks;
  struct FreeOnExit {
    BlockAllocator& allocator;
    std::vector<int32_t>& blocks;
    ~FreeOnExit() { allocator.Free(blocks); }
  } free_on_exit{blocks_, blocks};

  std::optional<IncrementalDecoder> decoder;
  if (tokenizer_ != nullptr) {
    decoder.emplace(*tokenizer_, request.skip_special_tokens, request.prompt_ids);
  }
  TokenCounts counts;
  counts.AddPromptTokens(request.prompt_ids);
  GenerationResult result;
  auto emit = [&](const std::string& text) {
    if (text.empty()) return;
    result.text += text;
    if (on_text) on_text(text);
  };

  // Prefill in chunks; the last chunk's last row gives the first token's logits.
  const int64_t num_prompt = static_cast<int64_t>(request.prompt_ids.size());
  ForwardOutput out;
  auto start = std::chrono::steady_clock::now();
  for (int64_t begin = 0; begin < num_prompt; begin += request.prefill_chunk_tokens) {
    const int64_t end = std::min(num_prompt, begin + request.prefill_chunk_tokens);
    SY_RETURN_IF_ERROR(EnsureBlocks(end, &blocks));
    BatchEntry entry;
    entry.token_ids = std::span<const int32_t>(request.prompt_ids).subspan(begin, end - begin);
    entry.start_position = begin;
    entry.block_table = blocks;
    entry.all_logits = request.return_prompt_logits;
    SY_RETURN_IF_ERROR(engine_.Forward({&entry, 1}, &out));
    if (request.return_prompt_logits) {
      result.prompt_logits.insert(result.prompt_logits.end(), out.logits.begin(), out.logits.end());
    }
    ++result.num_prefill_steps;
  }
  result.prefill_seconds = SecondsSince(start);

  start = std::chrono::steady_clock::now();
  const int64_t vocab = out.vocab_size;
  std::span<float> logits(out.logits.data() + out.logits.size() - vocab, vocab);
  SampledToken sampled;
  for (int64_t position = num_prompt;; ++position) {
    sampler_.Sample(logits, sampling, counts, static_cast<uint64_t>(position), &sampled);
    result.output_ids.push_back(sampled.token_id);
    result.output_logprobs.push_back(sampled.logprob);
    counts.AddOutputToken(sampled.token_id);
    std::string delta;
    if (decoder) {
      SY_ASSIGN_OR_RETURN(delta, decoder->Push(sampled.token_id));
    }
    StopResult stop = checker.Append(sampled.token_id, delta);
    emit(stop.text);
    if (stop.finished()) {
      if (decoder && stop.finish_reason == FinishReason::kLength) emit(decoder->Flush());
      result.finish = std::move(stop);
      break;
    }
    SY_RETURN_IF_ERROR(EnsureBlocks(position + 1, &blocks));
    BatchEntry entry;
    entry.token_ids = std::span<const int32_t>(&result.output_ids.back(), 1);
    entry.start_position = position;
    entry.block_table = blocks;
    SY_RETURN_IF_ERROR(engine_.Forward({&entry, 1}, &out));
    logits = std::span<float>(out.logits.data(), vocab);
  }
  result.decode_seconds = SecondsSince(start);
  return result;
}

}  // namespace switchyard
