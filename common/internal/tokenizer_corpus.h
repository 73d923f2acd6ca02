// The built-in multilingual training text of the tokenizer maker (English, German, Chinese,
// emoji, code, digits), written for Switchyard's generated test checkpoints.
#pragma once

#include <string_view>

namespace switchyard::tokenizer_internal {

// A few KB of UTF-8 text; stable, since made tokenizers (and golden ids) depend on it.
std::string_view MakerCorpus();

}  // namespace switchyard::tokenizer_internal
