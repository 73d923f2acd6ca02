#include "common/flags.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"

namespace switchyard {

std::vector<char*> ParseFlagsWithEnv(int argc, char** argv) {
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
  return absl::ParseCommandLine(argc, argv);
}

}  // namespace switchyard
