#include "common/flags.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/ascii.h"

namespace switchyard {
namespace {

// "--max-tokens=5" -> "--max_tokens=5" when max_tokens is a registered flag, so both spellings
// work (absl only knows underscores). Returns whether the flag takes its value from the next
// argument ("--prompt TEXT").
bool NormalizeFlagArg(std::string& arg) {
  const size_t dashes = arg.rfind("--", 0) == 0 ? 2 : (arg.rfind('-', 0) == 0 ? 1 : 0);
  if (dashes == 0 || arg.size() == dashes) return false;
  const size_t eq = arg.find('=');
  std::string name = arg.substr(dashes, eq == std::string::npos ? std::string::npos : eq - dashes);
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  // A negated bool: "--no-ignore-eos" or "--noignore-eos"; absl itself knows only "noignore_eos".
  std::string lookup = name;
  if (absl::FindCommandLineFlag(name) == nullptr && absl::StartsWith(name, "no")) {
    lookup = name.substr(name.size() > 2 && name[2] == '_' ? 3 : 2);
    name = "no" + lookup;
  }
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(lookup);
  if (flag == nullptr) return false;
  arg = arg.substr(0, dashes) + name + (eq == std::string::npos ? "" : arg.substr(eq));
  return eq == std::string::npos && !flag->IsOfType<bool>();
}

}  // namespace

std::vector<char*> ParseFlagsWithEnv(int argc, char** argv) {
  // --help lists the project's flags wherever they are defined (absl's default shows only flags
  // from a file named like the binary), and leaves out abseil's own.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return !absl::StrContains(file, "absl/"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  for (auto& [name, flag] : absl::GetAllFlags()) {
    std::string env_name = "SWITCHYARD_" + absl::AsciiStrToUpper(name);
    const char* value = std::getenv(env_name.c_str());
    if (value == nullptr) continue;
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      std::fprintf(stderr, "environment %s='%s': %s\n", env_name.c_str(), value, error.c_str());
      std::exit(2);
    }
  }
  // Normalised copies live for the whole process, as absl keeps pointers into argv.
  static std::vector<std::string>* normalized = new std::vector<std::string>(argv, argv + argc);
  static std::vector<char*>* args = new std::vector<char*>();
  for (int i = 1; i < argc; ++i) {
    if ((*normalized)[i] == "--") break;
    if (NormalizeFlagArg((*normalized)[i])) ++i;  // skip the value
  }
  for (std::string& s : *normalized) args->push_back(s.data());
  return absl::ParseCommandLine(argc, args->data());
}

}  // namespace switchyard
