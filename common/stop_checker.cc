#include "common/stop_checker.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace switchyard {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Length of the well-formed UTF-8 sequence starting at text[idx] (Unicode table 3-7: no overlong
// forms, no surrogates, nothing above U+10FFFF), or 0 if there is none.
size_t Utf8SequenceBytes(std::string_view text, size_t idx) {
  const auto byte = [&](size_t offset) { return static_cast<unsigned char>(text[idx + offset]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) return 1;
  size_t num_bytes;
  unsigned char second_lo = 0x80;
  unsigned char second_hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    num_bytes = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    num_bytes = 3;
    if (lead == 0xE0) second_lo = 0xA0;
    if (lead == 0xED) second_hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    num_bytes = 4;
    if (lead == 0xF0) second_lo = 0x90;
    if (lead == 0xF4) second_hi = 0x8F;
  } else {
    return 0;
  }
  if (idx + num_bytes > text.size()) return 0;
  if (byte(1) < second_lo || byte(1) > second_hi) return 0;
  for (size_t offset = 2; offset < num_bytes; ++offset) {
    if ((byte(offset) & 0xC0) != 0x80) return 0;
  }
  return num_bytes;
}

bool IsValidUtf8(std::string_view text) {
  for (size_t idx = 0; idx < text.size();) {
    const size_t num_bytes = Utf8SequenceBytes(text, idx);
    if (num_bytes == 0) return false;
    idx += num_bytes;
  }
  return true;
}

// Replaces each ill-formed byte with U+FFFD, so what reaches a proto3 string field is valid.
std::string ReplaceInvalidUtf8(std::string text) {
  if (IsValidUtf8(text)) return text;
  std::string out;
  for (size_t idx = 0; idx < text.size();) {
    const size_t num_bytes = Utf8SequenceBytes(text, idx);
    if (num_bytes == 0) {
      out.append(kReplacementChar);
      ++idx;
    } else {
      out.append(text, idx, num_bytes);
      idx += num_bytes;
    }
  }
  return out;
}

// Bytes at the end of `text` that start a multi-byte character but do not complete it.
size_t IncompleteUtf8TailBytes(std::string_view text) {
  const size_t max_back = std::min<size_t>(3, text.size());
  for (size_t back = 1; back <= max_back; ++back) {
    const auto byte = static_cast<unsigned char>(text[text.size() - back]);
    if ((byte & 0xC0) == 0x80) continue;  // continuation byte: look further back
    const size_t needed = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
    return needed > back ? back : 0;
  }
  return 0;
}

bool Contains(const std::vector<int32_t>& ids, int32_t token_id) {
  return std::find(ids.begin(), ids.end(), token_id) != ids.end();
}

}  // namespace

absl::StatusOr<StopChecker> StopChecker::Create(StopConfig config) {
  for (size_t stop_idx = 0; stop_idx < config.stop_strings.size(); ++stop_idx) {
    const std::string& stop = config.stop_strings[stop_idx];
    if (stop.empty() || !IsValidUtf8(stop)) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop[", stop_idx, "]: expected a non-empty valid UTF-8 string, found ",
                       stop.empty() ? "an empty string" : "invalid UTF-8"));
    }
  }
  if (config.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: expected >= 1, found ", config.max_tokens));
  }
  if (config.min_tokens < 0 || config.min_tokens > config.max_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_tokens: expected a value in [0, max_tokens=", config.max_tokens,
                     "], found ", config.min_tokens));
  }
  return StopChecker(std::move(config));
}

StopChecker::StopChecker(StopConfig config) : config_(std::move(config)) {
  for (const std::string& stop : config_.stop_strings) {
    max_stop_bytes_ = std::max(max_stop_bytes_, stop.size());
  }
}

StopResult StopChecker::Append(int32_t token_id, std::string_view text_delta) {
  SY_CHECK(!finished_);
  ++num_output_tokens_;
  const bool may_stop = num_output_tokens_ >= config_.min_tokens;

  bool is_eos = false;
  if (may_stop && IsStopToken(token_id, &is_eos)) {
    std::string text = std::move(pending_);
    if (config_.include_stop_str_in_output) text.append(text_delta);
    StopResult result = Finish(FinishReason::kStop, std::move(text));
    result.stop_token_id = token_id;
    result.is_eos = is_eos;
    return result;
  }

  const size_t num_old_bytes = pending_.size();
  pending_.append(text_delta);
  if (may_stop && !text_delta.empty()) {
    size_t stop_idx = 0;
    const size_t start = FindStopString(num_old_bytes, &stop_idx);
    if (start != std::string::npos) {
      const std::string& stop = config_.stop_strings[stop_idx];
      const size_t end = start + (config_.include_stop_str_in_output ? stop.size() : 0);
      StopResult result = Finish(FinishReason::kStop, pending_.substr(0, end));
      result.stop_string = stop;
      return result;
    }
  }
  if (num_output_tokens_ >= config_.max_tokens) {
    return Finish(FinishReason::kLength, std::move(pending_));
  }

  const size_t num_release = pending_.size() - NumBytesToHold();
  StopResult result;
  result.text = pending_.substr(0, num_release);
  pending_.erase(0, num_release);
  return result;
}

StopResult StopChecker::FinishByLength() {
  SY_CHECK(!finished_);
  return Finish(FinishReason::kLength, std::move(pending_));
}

bool StopChecker::IsStopToken(int32_t token_id, bool* is_eos) const {
  *is_eos = !config_.ignore_eos && Contains(config_.eos_token_ids, token_id);
  return *is_eos || Contains(config_.stop_token_ids, token_id);
}

// Only matches that end in the newest delta (after num_old_bytes) count: an older match was
// either found already or fell before min_tokens. The winner ends first; ties: starts first.
size_t StopChecker::FindStopString(size_t num_old_bytes, size_t* stop_idx) const {
  size_t best_start = std::string::npos;
  size_t best_end = std::string::npos;
  for (size_t idx = 0; idx < config_.stop_strings.size(); ++idx) {
    const std::string& stop = config_.stop_strings[idx];
    const size_t search_from =
        num_old_bytes + 1 >= stop.size() ? num_old_bytes + 1 - stop.size() : 0;
    const size_t start = pending_.find(stop, search_from);
    if (start == std::string::npos) continue;
    const size_t end = start + stop.size();
    if (end < best_end || (end == best_end && start < best_start)) {
      best_start = start;
      best_end = end;
      *stop_idx = idx;
    }
  }
  return best_start;
}

// The longest suffix of pending_ that is a proper prefix of a stop string, or an incomplete
// trailing character, whichever is longer. The tail is held with include_stop_str_in_output too:
// the search for a stop string only looks at unreleased text.
size_t StopChecker::NumBytesToHold() const {
  const size_t utf8_hold = IncompleteUtf8TailBytes(pending_);
  if (max_stop_bytes_ == 0) return utf8_hold;
  const std::string_view text = pending_;
  for (size_t num_bytes = std::min(text.size(), max_stop_bytes_ - 1); num_bytes > utf8_hold;
       --num_bytes) {
    const std::string_view suffix = text.substr(text.size() - num_bytes);
    for (const std::string& stop : config_.stop_strings) {
      if (stop.size() > num_bytes && std::string_view(stop).substr(0, num_bytes) == suffix) {
        return num_bytes;
      }
    }
  }
  return utf8_hold;
}

StopResult StopChecker::Finish(FinishReason reason, std::string text) {
  finished_ = true;
  pending_.clear();
  StopResult result;
  result.text = ReplaceInvalidUtf8(std::move(text));
  result.finish_reason = reason;
  return result;
}

}  // namespace switchyard
