// ParseFlagsWithEnv (common/flags.h) through a real process: absl parses a command line once per
// process, so each case runs flags_probe with its own arguments and environment.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "gtest/gtest.h"

namespace {

struct Outcome {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `env_and_args` (shell words: VAR=value ... then arguments) in front of the probe.
Outcome Probe(const std::string& env, const std::string& args) {
  const std::string command = "env -u SWITCHYARD_MAX_TOKENS -u SWITCHYARD_IGNORE_EOS " + env +
                              " " FLAGS_PROBE_PATH " " + args + " 2>&1";
  Outcome outcome;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return outcome;
  std::array<char, 512> buffer;
  while (fgets(buffer.data(), buffer.size(), pipe) != nullptr) outcome.output += buffer.data();
  const int status = pclose(pipe);
  outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return outcome;
}

TEST(FlagsTest, DashesAndUnderscoresAreTheSameFlag) {
  EXPECT_EQ(Probe("", "--max-tokens=5 --stop-text x").output,
            "ignore_eos=1 max_tokens=5 stop_text=x positional=0\n");
  EXPECT_EQ(Probe("", "--max_tokens 6 --stop_text=y").output,
            "ignore_eos=1 max_tokens=6 stop_text=y positional=0\n");
}

TEST(FlagsTest, NegatedBoolsInEverySpelling) {
  for (const char* spelling : {"--no-ignore-eos", "--no_ignore_eos", "--noignore_eos",
                               "--noignore-eos", "--ignore-eos=false"}) {
    EXPECT_EQ(Probe("", spelling).output, "ignore_eos=0 max_tokens=16 stop_text= positional=0\n")
        << spelling;
  }
  EXPECT_EQ(Probe("", "--no-ignore-eos --ignore-eos").output,
            "ignore_eos=1 max_tokens=16 stop_text= positional=0\n");
}

TEST(FlagsTest, EnvironmentSetsFlagsAndTheCommandLineWins) {
  EXPECT_EQ(Probe("SWITCHYARD_MAX_TOKENS=7 SWITCHYARD_IGNORE_EOS=false", "").output,
            "ignore_eos=0 max_tokens=7 stop_text= positional=0\n");
  EXPECT_EQ(Probe("SWITCHYARD_MAX_TOKENS=7", "--max-tokens=9").output,
            "ignore_eos=1 max_tokens=9 stop_text= positional=0\n");
}

TEST(FlagsTest, PositionalArgumentsAndTheDoubleDash) {
  EXPECT_EQ(Probe("", "a --max-tokens 3 b -- --no-ignore-eos").output,
            "ignore_eos=1 max_tokens=3 stop_text= positional=3\n");
}

TEST(FlagsTest, BadValuesAndUnknownFlagsExitWithAMessage) {
  const Outcome bad_env = Probe("SWITCHYARD_MAX_TOKENS=lots", "");
  EXPECT_EQ(bad_env.exit_code, 2);
  EXPECT_NE(bad_env.output.find("SWITCHYARD_MAX_TOKENS='lots'"), std::string::npos)
      << bad_env.output;
  const Outcome bad_arg = Probe("", "--max-tokens=lots");
  EXPECT_NE(bad_arg.exit_code, 0);
  EXPECT_NE(bad_arg.output.find("max_tokens"), std::string::npos) << bad_arg.output;
  const Outcome unknown = Probe("", "--no-such-flag");
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE(unknown.output.find("no-such-flag"), std::string::npos) << unknown.output;
}

}  // namespace
