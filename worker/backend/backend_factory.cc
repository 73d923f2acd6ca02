// Chooses a backend by name. The only place that knows which backends were built.
#include <string>

#include "absl/strings/str_cat.h"
#include "worker/backend/backend.h"
#if defined(SWITCHYARD_HAVE_CUDA_BACKEND)
#include "worker/backend/cuda_backend.h"
#endif

namespace switchyard {

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view name) {
  if (name == "cpu") return MakeCpuBackend();
  if (name == "cuda" || name == "auto") {
#if defined(SWITCHYARD_HAVE_CUDA_BACKEND)
    std::string why;
    if (CudaDeviceAvailable(&why)) return MakeCudaBackend();
    if (name == "auto") return MakeCpuBackend();
    return absl::UnavailableError(absl::StrCat(
        "backend cuda: no usable CUDA device (", why, "); use --backend=cpu"));
#else
    if (name == "auto") return MakeCpuBackend();
    return absl::UnavailableError(
        "backend cuda: this build has no CUDA backend (configure with -DSWITCHYARD_WITH_CUDA=ON); "
        "use --backend=cpu");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("backend: expected one of auto, cpu, cuda; found '", std::string(name), "'"));
}

}  // namespace switchyard
