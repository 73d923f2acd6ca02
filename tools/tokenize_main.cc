// switchyard-tokenize: encode text to ids or decode ids to text with a tokenizer.json, the way
// Hugging Face's `tokenizers` does (add_special_tokens=true by default), or write a tokenizer
// made by the tokenizer maker.
//
//   switchyard-tokenize --tokenizer FILE (--encode TEXT | --decode 1,2,3) [--no-special]
//   switchyard-tokenize --make FAMILY --vocab-size N    (tokenizer.json on stdout)
//
// Exit codes: 0 success, 1 failure (message on stderr), 2 bad usage.
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/cli_support.h"
#include "common/model_config.h"
#include "common/tokenizer.h"
#include "common/tokenizer_maker.h"

namespace {

constexpr char kUsage[] =
    "usage: switchyard-tokenize --tokenizer FILE (--encode TEXT | --decode 1,2,3) [--no-special]\n"
    "       switchyard-tokenize --make FAMILY --vocab-size N\n"
    "  --no-special: with --encode, leave out the post-processor's tokens (BOS and the like);\n"
    "                with --decode, skip special tokens\n";

struct Args {
  std::optional<std::string> tokenizer, encode, decode, make, vocab_size;
  bool no_special = false;
};

int Usage(const std::string& problem) {
  std::cerr << "switchyard-tokenize: " << problem << "\n" << kUsage;
  return 2;
}

// Accepts "--name value" and "--name=value".
bool ParseArgs(int argc, char** argv, Args* args, std::string* problem) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--no-special") {
      args->no_special = true;
      continue;
    }
    std::optional<std::string> inline_value;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      inline_value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    std::optional<std::string>* slot = arg == "--tokenizer"    ? &args->tokenizer
                                       : arg == "--encode"     ? &args->encode
                                       : arg == "--decode"     ? &args->decode
                                       : arg == "--make"       ? &args->make
                                       : arg == "--vocab-size" ? &args->vocab_size
                                                               : nullptr;
    if (slot == nullptr) {
      *problem = "unknown argument '" + arg + "'";
      return false;
    }
    if (!inline_value.has_value()) {
      if (i + 1 >= argc) {
        *problem = arg + " needs a value";
        return false;
      }
      inline_value = argv[++i];
    }
    *slot = *inline_value;
  }
  return true;
}

std::optional<switchyard::ModelFamily> FamilyFromName(const std::string& name) {
  using switchyard::ModelFamily;
  for (ModelFamily family : {ModelFamily::kLlama, ModelFamily::kMixtral, ModelFamily::kQwen2Moe,
                             ModelFamily::kQwen3Moe, ModelFamily::kOlmoe, ModelFamily::kLlama4}) {
    if (switchyard::ModelFamilyName(family) == name) return family;
  }
  return std::nullopt;
}

int Make(const Args& args) {
  const auto family = FamilyFromName(*args.make);
  int64_t vocab_size = 0;
  if (!family.has_value()) return Usage("unknown family '" + *args.make + "'");
  if (!args.vocab_size.has_value() || !absl::SimpleAtoi(*args.vocab_size, &vocab_size)) {
    return Usage("--make needs --vocab-size N");
  }
  auto made = switchyard::MakeTokenizer(*family, vocab_size);
  if (!made.ok()) {
    std::cerr << "switchyard-tokenize: " << made.status() << "\n";
    return 1;
  }
  std::cout << made->json << "\n";
  return 0;
}

int Run(const Args& args) {
  auto tokenizer = switchyard::Tokenizer::FromFile(*args.tokenizer);
  if (!tokenizer.ok()) {
    std::cerr << "switchyard-tokenize: " << tokenizer.status() << "\n";
    return 1;
  }
  if (args.encode.has_value()) {
    auto ids = (*tokenizer)->Encode(*args.encode, !args.no_special);
    if (!ids.ok()) {
      std::cerr << "switchyard-tokenize: " << ids.status() << "\n";
      return 1;
    }
    std::cout << absl::StrJoin(*ids, ",") << "\n";
    return 0;
  }
  absl::StatusOr<std::vector<int32_t>> ids = switchyard::ParseIdList(*args.decode, "--decode");
  if (!ids.ok()) return Usage(std::string(ids.status().message()));
  auto text = (*tokenizer)->Decode(*ids, args.no_special);
  if (!text.ok()) {
    std::cerr << "switchyard-tokenize: " << text.status() << "\n";
    return 1;
  }
  std::cout << *text << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  std::string problem;
  if (!ParseArgs(argc, argv, &args, &problem)) return Usage(problem);
  if (args.make.has_value()) return Make(args);
  if (!args.tokenizer.has_value()) return Usage("--tokenizer FILE is required");
  if (args.encode.has_value() == args.decode.has_value()) {
    return Usage("give exactly one of --encode TEXT and --decode IDS");
  }
  return Run(args);
}
