// The step loop's per-request state (request_manager.cc and request_outputs.cc share it).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/time/time.h"
#include "common/stop_checker.h"
#include "common/tokenizer.h"
#include "coordinator/request_manager.h"

namespace switchyard {

// One accepted request, owned by the loop thread.
struct RequestManager::Active {
  Active(Intake intake, int64_t seq_id_in, StopChecker checker_in, const Tokenizer* tokenizer)
      : seq_id(seq_id_in),
        request_id(intake.request.request_id),
        sink(std::move(intake.sink)),
        num_prompt_tokens(static_cast<int64_t>(intake.request.prompt_token_ids.size())),
        num_logprobs(intake.request.sampling.num_logprobs),
        checker(std::move(checker_in)),
        arrival(intake.arrival) {
    if (tokenizer != nullptr) {
      decoder.emplace(*tokenizer, intake.request.skip_special_tokens,
                      intake.request.prompt_token_ids);
    }
  }

  int64_t seq_id;
  std::string request_id;
  std::shared_ptr<ResponseSink> sink;
  int64_t num_prompt_tokens;
  int32_t num_logprobs;
  StopChecker checker;
  std::optional<IncrementalDecoder> decoder;  // none without a tokenizer: token ids only
  absl::Time arrival;
  absl::Time scheduled = absl::InfinitePast();
  absl::Time first_token = absl::InfinitePast();
  absl::Time last_token = absl::InfinitePast();
};

}  // namespace switchyard
