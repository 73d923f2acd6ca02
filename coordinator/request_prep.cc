#include "coordinator/request_prep.h"

#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::GenerateRequest& request,
                                               const ModelContext& model) {
  std::vector<int32_t> ids;
  switch (request.input_case()) {
    case v1::GenerateRequest::kText: {
      if (request.text().empty()) {
        return absl::InvalidArgumentError("text: empty; expected a non-empty prompt");
      }
      if (model.tokenizer == nullptr) {
        return absl::InvalidArgumentError("text: this server has no tokenizer; send token_ids");
      }
      const bool add_special = !request.has_add_special_tokens() || request.add_special_tokens();
      absl::StatusOr<std::vector<int32_t>> encoded =
          model.tokenizer->Encode(std::string_view(request.text()), add_special);
      if (!encoded.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("text: ", encoded.status().message()));
      }
      ids = *std::move(encoded);
      break;
    }
    case v1::GenerateRequest::kTokenIds:
      ids.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= model.vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("token_ids.ids[", i, "] = ", ids[i],
                                                         ": outside the vocabulary [0, ",
                                                         model.vocab_size, ")"));
        }
      }
      break;
    default:
      return absl::InvalidArgumentError("input: neither text nor token_ids is set");
  }
  if (ids.empty()) {
    return absl::InvalidArgumentError("input: the prompt has no tokens; expected at least 1");
  }
  if (static_cast<int64_t>(ids.size()) >= model.max_model_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("input: the prompt has ", ids.size(), " tokens; the context is ",
                     model.max_model_len, " tokens and must leave room for 1 output token"));
  }
  return ids;
}

SamplingParams ResolveSampling(const v1::SamplingParams& in, uint64_t random_seed) {
  SamplingParams out;
  out.temperature = in.has_temperature() ? in.temperature() : 1.0f;
  out.top_p = in.has_top_p() ? in.top_p() : 1.0f;
  out.top_k = in.top_k();
  out.min_p = in.min_p();
  out.repetition_penalty = in.has_repetition_penalty() ? in.repetition_penalty() : 1.0f;
  out.presence_penalty = in.presence_penalty();
  out.frequency_penalty = in.frequency_penalty();
  out.has_seed = in.has_seed();
  out.seed = in.has_seed() ? in.seed() : random_seed;
  out.num_logprobs = in.logprobs();
  return out;
}

absl::Status ResolveMaxTokens(const v1::StoppingParams& stopping, int64_t num_prompt_tokens,
                              const ModelContext& model, int64_t* max_tokens) {
  const int64_t room = model.max_model_len - num_prompt_tokens;
  if (!stopping.has_max_tokens()) {
    *max_tokens = std::min(kDefaultMaxTokens, room);
    return absl::OkStatus();
  }
  *max_tokens = stopping.max_tokens();
  if (*max_tokens < 1) {
    return absl::InvalidArgumentError("stopping.max_tokens = 0: expected at least 1");
  }
  if (*max_tokens > room) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stopping.max_tokens = ", *max_tokens, ": the prompt has ", num_prompt_tokens,
        " tokens and the context is ", model.max_model_len, ", so at most ", room, " fit"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PreparedRequest> PrepareRequest(const v1::GenerateRequest& request,
                                               const ModelContext& model, uint64_t random_seed) {
  PreparedRequest prepared;
  prepared.request_id = request.request_id();
  SY_ASSIGN_OR_RETURN(prepared.prompt_token_ids, PromptIds(request, model));
  prepared.sampling = ResolveSampling(request.sampling(), random_seed);
  absl::Status sampling_status = ValidateSamplingParams(prepared.sampling, model.vocab_size);
  if (!sampling_status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: ", sampling_status.message()));
  }
  const v1::StoppingParams& stopping = request.stopping();
  int64_t max_tokens = 0;
  SY_RETURN_IF_ERROR(ResolveMaxTokens(
      stopping, static_cast<int64_t>(prepared.prompt_token_ids.size()), model, &max_tokens));
  StopConfig& stop = prepared.stop;
  stop.stop_strings.assign(stopping.stop().begin(), stopping.stop().end());
  stop.stop_token_ids.assign(stopping.stop_token_ids().begin(), stopping.stop_token_ids().end());
  stop.eos_token_ids = model.eos_token_ids;
  stop.ignore_eos = stopping.ignore_eos();
  stop.max_tokens = max_tokens;
  stop.min_tokens = stopping.min_tokens();
  stop.include_stop_str_in_output = stopping.include_stop_str_in_output();
  if (stop.min_tokens > max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.min_tokens = ", stop.min_tokens,
                                                   ": must not exceed max_tokens (", max_tokens,
                                                   ")"));
  }
  absl::StatusOr<StopChecker> checker = StopChecker::Create(stop);
  if (!checker.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("stopping: ", checker.status().message()));
  }
  prepared.checker.emplace(*std::move(checker));  // built once, here, off the step loop
  prepared.skip_special_tokens =
      !request.has_skip_special_tokens() || request.skip_special_tokens();
  return prepared;
}

}  // namespace switchyard
