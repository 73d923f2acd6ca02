// Helpers for tests that need a GPU: they skip cleanly when none is usable (no driver, no device,
// or any other error at device query), and move host vectors to and from the device.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace switchyard::testing {

inline bool HasCudaDevice() {
  int count = 0;
  const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  cudaGetLastError();  // a failed query must not leak into the next call
  return ok;
}

// A device copy of a host vector (or n uninitialised elements), freed on scope exit. Failures are
// test failures (EXPECT), so a broken device shows up as such rather than as a crash.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : size_(n) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&data_), std::max<size_t>(n, 1) * sizeof(T)),
              cudaSuccess);
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    if (!host.empty()) {
      EXPECT_EQ(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  ~DeviceArray() { cudaFree(data_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return data_; }
  size_t size() const { return size_; }
  // Fills the device memory with a byte pattern (0xff: NaN for floats, -1 for ints) so an
  // element the kernel fails to write cannot pass as a plausible value.
  void Poison() { EXPECT_EQ(cudaMemset(data_, 0xff, std::max<size_t>(size_, 1) * sizeof(T)), cudaSuccess); }
  std::vector<T> ToHost() const {
    std::vector<T> host(size_);
    if (size_ > 0) {
      EXPECT_EQ(cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return host;
  }

 private:
  T* data_ = nullptr;
  size_t size_;
};

inline std::vector<float> RandomNormal(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline std::vector<__nv_bfloat16> ToBf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}

inline std::vector<float> ToFloat(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

// Values rounded through bf16, so a CPU reference sees exactly the GPU's inputs.
inline std::vector<float> RoundBf16(const std::vector<float>& v) { return ToFloat(ToBf16(v)); }

// ||got - ref|| / ||ref|| (NaN anywhere gives NaN, which fails every "<" check).
inline double RelError(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline bool AllFinite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

}  // namespace switchyard::testing

#define SY_SKIP_WITHOUT_GPU()                                                               \
  do {                                                                                      \
    if (!::switchyard::testing::HasCudaDevice()) GTEST_SKIP() << "no usable CUDA device"; \
  } while (0)
