// CUDA elementwise ops against their CPU reference ops (kernels/cpu/elementwise.h).
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/elementwise.h"
#include "tests/gpu/gpu_test_util.h"

namespace switchyard::kernels {
namespace {

// A device copy of a host vector, freed on scope exit.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const std::vector<float>& host) : size_(host.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&data_), size_ * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(data_, host.data(), size_ * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(data_); }
  float* get() { return data_; }
  std::vector<float> ToHost() const {
    std::vector<float> host(size_);
    EXPECT_EQ(cudaMemcpy(host.data(), data_, size_ * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

 private:
  float* data_ = nullptr;
  size_t size_;
};

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(ElementwiseGpuTest, RmsNormMatchesCpu) {
  SY_SKIP_WITHOUT_GPU();
  for (int64_t dim : {1, 64, 1000, 4096}) {
    const int64_t rows = 37;
    std::vector<float> x = Random(rows * dim, 1), w = Random(dim, 2), ref(rows * dim);
    cpu::RmsNorm(x.data(), w.data(), ref.data(), rows, dim, 1e-6f);
    DeviceBuffer dx(x), dw(w), dout(std::vector<float>(rows * dim));
    ASSERT_EQ(cuda::LaunchRmsNorm(dx.get(), dw.get(), dout.get(), rows, dim, 1e-6f, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<float> got = dout.ToHost();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-4 * (1 + std::abs(ref[i]))) << "dim " << dim << " i " << i;
  }
}

TEST(ElementwiseGpuTest, SiluMulFusedRowsMatchCpu) {
  SY_SKIP_WITHOUT_GPU();
  const int64_t rows = 19, inter = 300;
  std::vector<float> gate_up = Random(rows * 2 * inter, 3), ref(rows * inter);
  cpu::SiluMul(gate_up.data(), 2 * inter, gate_up.data() + inter, 2 * inter, ref.data(), rows, inter);
  DeviceBuffer d_in(gate_up), d_out(std::vector<float>(rows * inter));
  ASSERT_EQ(cuda::LaunchSiluMul(d_in.get(), 2 * inter, d_in.get() + inter, 2 * inter, d_out.get(), rows, inter, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> got = d_out.ToHost();
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-5 * (1 + std::abs(ref[i])));
}

TEST(ElementwiseGpuTest, EmptyInputIsANoOp) {
  SY_SKIP_WITHOUT_GPU();
  EXPECT_EQ(cuda::LaunchRmsNorm(nullptr, nullptr, nullptr, 0, 64, 1e-6f, nullptr), cudaSuccess);
}

}  // namespace
}  // namespace switchyard::kernels
