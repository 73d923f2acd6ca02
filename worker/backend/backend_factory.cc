// Chooses a backend by name. The only place that knows which backends were built.
#include <string>

#include "absl/strings/str_cat.h"
#include "worker/backend/backend.h"

namespace switchyard {

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view name) {
  if (name == "cpu" || name == "auto") return MakeCpuBackend();
  if (name == "cuda") {
    return absl::UnavailableError(
        "backend cuda: the CUDA model backend is not available in this build yet; use --backend=cpu");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("backend: expected one of auto, cpu, cuda; found '", std::string(name), "'"));
}

}  // namespace switchyard
