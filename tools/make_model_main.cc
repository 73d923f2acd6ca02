// switchyard-make-model: writes a small random-weight Hugging Face checkpoint (see
// tools/model_maker.h), e.g. `switchyard-make-model --family qwen3_moe --out /tmp/qwen3`.
#include <cstdio>
#include <string>
#include <vector>

#include "tools/model_maker.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::fputs(switchyard::MakeModelUsage().c_str(), stdout);
      return 0;
    }
  }
  absl::StatusOr<switchyard::MakeModelOptions> options = switchyard::ParseMakeModelArgs(args);
  if (!options.ok()) {
    std::fprintf(stderr, "%s\n%s", std::string(options.status().message()).c_str(),
                 switchyard::MakeModelUsage().c_str());
    return 2;
  }
  absl::Status status = switchyard::MakeModel(*options);
  if (!status.ok()) {
    std::fprintf(stderr, "switchyard-make-model: %s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("wrote %s checkpoint to %s\n", options->family.c_str(),
              options->out_dir.string().c_str());
  return 0;
}
