// A program for flags_test: parses its command line with ParseFlagsWithEnv and prints the values
// of three flags (one of each kind the binaries use) and its positional arguments.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "common/flags.h"

ABSL_FLAG(bool, ignore_eos, true, "a bool that defaults to true");
ABSL_FLAG(int64_t, max_tokens, 16, "an integer");
ABSL_FLAG(std::string, stop_text, "", "a string");

int main(int argc, char** argv) {
  const std::vector<char*> positional = switchyard::ParseFlagsWithEnv(argc, argv);
  std::printf("ignore_eos=%d max_tokens=%lld stop_text=%s positional=%zu\n",
              absl::GetFlag(FLAGS_ignore_eos) ? 1 : 0,
              static_cast<long long>(absl::GetFlag(FLAGS_max_tokens)),
              absl::GetFlag(FLAGS_stop_text).c_str(), positional.size() - 1);
  return 0;
}
