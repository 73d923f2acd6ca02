// Command-line flags with environment-variable equivalents.
//
// Every absl flag `--foo_bar` may be spelled `--foo-bar` too, and can also be set as
// SWITCHYARD_FOO_BAR in the environment (handy in
// Kubernetes manifests); a flag given on the command line wins over the environment.
#pragma once

#include <vector>

namespace switchyard {

// Applies SWITCHYARD_* environment variables to the registered flags, then parses argv.
// Exits with a message on a malformed value (as absl::ParseCommandLine does).
// Returns the positional arguments (argv[0] first).
std::vector<char*> ParseFlagsWithEnv(int argc, char** argv);

}  // namespace switchyard
