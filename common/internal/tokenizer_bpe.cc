#include "common/internal/tokenizer_bpe.h"

#include <queue>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/internal/tokenizer_text.h"
#include "common/status_macros.h"

namespace switchyard::tokenizer_internal {
namespace {

using Json = nlohmann::json;

std::string OptionalString(const Json& model, const char* key) {
  return model.contains(key) && model[key].is_string() ? model[key].get<std::string>() : "";
}

// "a b" or ["a", "b"]: both forms appear in tokenizer.json files.
absl::StatusOr<std::pair<std::string, std::string>> ParseMerge(const Json& merge, size_t idx) {
  if (merge.is_array() && merge.size() == 2) {
    return std::make_pair(merge[0].get<std::string>(), merge[1].get<std::string>());
  }
  if (merge.is_string()) {
    const std::string text = merge.get<std::string>();
    const size_t space = text.find(' ');
    if (space != std::string::npos && text.find(' ', space + 1) == std::string::npos) {
      return std::make_pair(text.substr(0, space), text.substr(space + 1));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "model.merges[", idx, "]: expected \"left right\" or [left, right], found ", merge.dump()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const Json& model) {
  auto bpe = std::unique_ptr<BpeModel>(new BpeModel());
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError("model.vocab: expected an object of token -> id");
  }
  for (const auto& [token, id_json] : model["vocab"].items()) {
    const int64_t id = id_json.get<int64_t>();
    if (id < 0 || id > INT32_MAX - 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.vocab['", token, "']: id ", id, " is out of range"));
    }
    bpe->vocab_[token] = static_cast<int32_t>(id);
    if (static_cast<size_t>(id) >= bpe->id_to_token_.size()) {
      bpe->id_to_token_.resize(id + 1);
      bpe->has_id_.resize(id + 1, false);
    }
    bpe->id_to_token_[id] = token;
    bpe->has_id_[id] = true;
  }
  SY_RETURN_IF_ERROR(bpe->LoadMerges(model.contains("merges") ? model["merges"] : Json::array()));
  bpe->continuing_subword_prefix_ = OptionalString(model, "continuing_subword_prefix");
  bpe->end_of_word_suffix_ = OptionalString(model, "end_of_word_suffix");
  bpe->fuse_unk_ = model.value("fuse_unk", false);
  bpe->byte_fallback_ = model.value("byte_fallback", false);
  bpe->ignore_merges_ = model.value("ignore_merges", false);
  const std::string unk = OptionalString(model, "unk_token");
  if (!unk.empty()) {
    auto it = bpe->vocab_.find(unk);
    if (it == bpe->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.unk_token '", unk, "' is not in the vocab"));
    }
    bpe->unk_id_ = it->second;
  }
  bpe->byte_ids_.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    auto it = bpe->vocab_.find(absl::StrFormat("<0x%02X>", b));
    if (it != bpe->vocab_.end()) bpe->byte_ids_[b] = it->second;
  }
  return bpe;
}

absl::Status BpeModel::LoadMerges(const Json& merges) {
  if (!merges.is_array()) return absl::InvalidArgumentError("model.merges: expected an array");
  merges_.reserve(merges.size());
  for (size_t idx = 0; idx < merges.size(); ++idx) {
    SY_ASSIGN_OR_RETURN(auto pair, ParseMerge(merges[idx], idx));
    const std::string merged_token = pair.first + pair.second;
    auto left = vocab_.find(pair.first);
    auto right = vocab_.find(pair.second);
    auto merged = vocab_.find(merged_token);
    if (left == vocab_.end() || right == vocab_.end() || merged == vocab_.end()) {
      const std::string& missing = left == vocab_.end()    ? pair.first
                                   : right == vocab_.end() ? pair.second
                                                           : merged_token;
      return absl::InvalidArgumentError(absl::StrCat("model.merges[", idx, "] '", pair.first, " ",
                                                     pair.second, "': token '", missing,
                                                     "' is not in the vocab"));
    }
    // The first occurrence of a pair keeps its (lower) rank, as in HF.
    merges_.try_emplace(PairKey(left->second, right->second),
                        MergeResult{static_cast<int32_t>(idx), merged->second});
  }
  return absl::OkStatus();
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(absl::string_view(token.data(), token.size()));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

std::vector<BpeModel::Symbol> BpeModel::InitialSymbols(std::string_view word) const {
  std::vector<Symbol> symbols;
  auto push = [&](int32_t id, int32_t num_bytes) {
    const auto idx = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, idx - 1, -1, num_bytes});
    if (idx > 0) symbols[idx - 1].next = idx;
  };
  bool last_was_unk = false;
  std::string piece;
  for (size_t pos = 0; pos < word.size();) {
    const int n = std::min<int>(Utf8CharLength(static_cast<unsigned char>(word[pos])),
                                static_cast<int>(word.size() - pos));
    const std::string_view ch = word.substr(pos, n);
    piece.clear();
    if (pos > 0) piece += continuing_subword_prefix_;
    piece.append(ch);
    if (pos + n == word.size()) piece += end_of_word_suffix_;
    pos += n;
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      push(it->second, n);
      last_was_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (char c : ch) all_bytes = all_bytes && byte_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all_bytes) {
        for (char c : ch) push(byte_ids_[static_cast<uint8_t>(c)], 1);
        last_was_unk = false;
        continue;
      }
    }
    if (!unk_id_.has_value()) continue;  // HF drops characters it cannot represent
    if (fuse_unk_ && last_was_unk) {
      symbols.back().num_bytes += n;
    } else {
      push(*unk_id_, n);
    }
    last_was_unk = true;
  }
  return symbols;
}

void BpeModel::ApplyMerges(std::vector<Symbol>* symbols_ptr) const {
  std::vector<Symbol>& symbols = *symbols_ptr;
  struct Candidate {
    int32_t rank, pos, new_id;
    // std::priority_queue pops the largest: invert so the lowest rank, then leftmost, wins.
    bool operator<(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : pos > other.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  auto consider = [&](int32_t left_idx) {
    if (left_idx < 0) return;
    const int32_t right_idx = symbols[left_idx].next;
    if (right_idx < 0) return;
    auto it = merges_.find(PairKey(symbols[left_idx].id, symbols[right_idx].id));
    if (it != merges_.end()) queue.push({it->second.rank, left_idx, it->second.new_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.num_bytes == 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale candidate
    left.id = top.new_id;
    left.num_bytes += right.num_bytes;
    right.num_bytes = 0;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    consider(left.prev);
    consider(top.pos);
  }
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(absl::string_view(word.data(), word.size())); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> symbols = InitialSymbols(word);
  ApplyMerges(&symbols);
  for (const Symbol& symbol : symbols) {
    if (symbol.num_bytes > 0) ids->push_back(symbol.id);
  }
}

}  // namespace switchyard::tokenizer_internal
