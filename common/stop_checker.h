// Stop conditions of one sequence, checked on token ids and on the detokenized text, as vLLM does.
//
// The coordinator keeps one StopChecker per sequence. After each sampled token it feeds the token
// id and the incremental detokenizer's text delta for it (possibly empty; always whole UTF-8
// characters). The checker answers with the text that may be streamed to the client now and
// whether the sequence has finished, and why.
//
// Rules (vLLM semantics unless noted):
// - Tokens are counted as they arrive; num_output_tokens includes the current token.
// - No stop of any kind happens while num_output_tokens < min_tokens (vLLM's check_stop rule).
//   The sampler is not asked to mask EOS or stop tokens before min_tokens: such a token simply
//   does not stop the sequence, and its text delta (usually empty) is streamed like any other.
// - An EOS token id (unless ignore_eos) or a stop token id ends the sequence with kStop. Its own
//   text delta is dropped unless include_stop_str_in_output.
// - Stop strings are searched in the text. The matched string and everything after it are never
//   released (with include_stop_str_in_output the matched string is released, the rest is not).
//   While the released text could end in the start of a stop string, that tail is held back, so a
//   stop string split across deltas is never streamed. The tail held is exactly the longest
//   suffix that is a proper prefix of some stop string (vLLM holds a fixed max_len - 1, and
//   nothing with include_stop_str_in_output; here the tail is held in both cases).
// - When several stop strings match, the one that completes first in the text wins (ties: the
//   longer one), as if the text arrived one character at a time; so the result does not depend on
//   how the text was cut into deltas. (vLLM takes the first listed stop string found.)
// - Stop conditions win over max_tokens when both happen on the same token (vLLM v0 order).
// - When num_output_tokens reaches max_tokens the sequence ends with kLength, releasing all held
//   text. FinishByLength() does the same when the caller ends the sequence for another length
//   limit (the model's context length).
// - Any finish releases the held tail that is not part of a matched stop string.
// UTF-8: stop strings must be valid UTF-8, so a held tail always starts on a character boundary
// (a prefix of a valid stop string starts with a lead byte). A delta ending in an incomplete
// character (a detokenizer bug) has that partial character held until it completes; at the end it
// is released as U+FFFD, so released text is always valid UTF-8.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace switchyard {

struct StopConfig {
  std::vector<std::string> stop_strings;  // each non-empty, valid UTF-8
  std::vector<int32_t> stop_token_ids;
  std::vector<int32_t> eos_token_ids;
  bool ignore_eos = false;
  int64_t max_tokens = 16;  // >= 1; the caller clamps it to the context left
  int64_t min_tokens = 0;   // in [0, max_tokens]
  bool include_stop_str_in_output = false;
};

enum class FinishReason { kNone, kStop, kLength };

struct StopResult {
  std::string text;  // text to release to the client now (may be empty)
  FinishReason finish_reason = FinishReason::kNone;
  // With kStop, exactly one of these says why (vLLM's stop_reason; is_eos for an EOS token id).
  std::optional<std::string> stop_string;
  std::optional<int32_t> stop_token_id;
  bool is_eos = false;

  bool finished() const { return finish_reason != FinishReason::kNone; }
};

// Tracks the stop conditions of one sequence. Movable; not thread-safe (one owner).
class StopChecker {
 public:
  // INVALID_ARGUMENT for an empty or invalid-UTF-8 stop string, max_tokens < 1, or min_tokens
  // outside [0, max_tokens].
  static absl::StatusOr<StopChecker> Create(StopConfig config);

  // Feeds the next sampled token and its text delta.
  // REQUIRES: !finished().
  StopResult Append(int32_t token_id, std::string_view text_delta);

  // Ends the sequence with kLength (e.g. the context is full), releasing the held text.
  // REQUIRES: !finished().
  StopResult FinishByLength();

  bool finished() const { return finished_; }
  int64_t num_output_tokens() const { return num_output_tokens_; }
  // Text received but not released yet.
  const std::string& held_text() const { return pending_; }

 private:
  explicit StopChecker(StopConfig config);

  bool IsStopToken(int32_t token_id, bool* is_eos) const;
  // Returns the start offset in pending_ of the winning stop string, or npos.
  size_t FindStopString(size_t num_old_bytes, size_t* stop_idx) const;
  size_t NumBytesToHold() const;
  StopResult Finish(FinishReason reason, std::string text);

  StopConfig config_;
  size_t max_stop_bytes_ = 0;
  std::string pending_;  // unreleased text: the held tail plus the newest delta
  int64_t num_output_tokens_ = 0;
  bool finished_ = false;
};

}  // namespace switchyard
