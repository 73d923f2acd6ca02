// Helpers for tests that need a GPU: they skip cleanly when none is usable (no driver, no device,
// or any other error at device query).
#pragma once

#include <cuda_runtime_api.h>

#include "gtest/gtest.h"

namespace switchyard::testing {

inline bool HasCudaDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

}  // namespace switchyard::testing

#define SY_SKIP_WITHOUT_GPU()                                                  \
  do {                                                                         \
    if (!::switchyard::testing::HasCudaDevice()) GTEST_SKIP() << "no usable CUDA device"; \
  } while (0)
