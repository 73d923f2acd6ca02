#include "kernels/cuda/sampling.h"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <climits>
#include <cmath>

#include "kernels/cuda/internal/device_utils.cuh"

namespace switchyard::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // consecutive ranks per thread in the scans
constexpr size_t kAlign = 256;

size_t AlignUp(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Philox4x32-10 as in worker/sampler.cc: counter {pos_lo, pos_hi, 0, 0}, key {seed_lo, seed_hi};
// the uniform takes the top 53 bits of (word0 << 32 | word1).
__host__ __device__ double PhiloxUniform(uint64_t seed, uint64_t position) {
  uint32_t c0 = static_cast<uint32_t>(position), c1 = static_cast<uint32_t>(position >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round_idx = 0; round_idx < 10; ++round_idx) {
    if (round_idx > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  const uint64_t bits = ((static_cast<uint64_t>(c0) << 32) | c1) >> 11;
  return static_cast<double>(bits) * 0x1.0p-53;
}

struct Workspace {
  float* keys_in;
  float* keys_out;
  int32_t* ids_in;
  int32_t* ids_out;
  int32_t* offsets;
  void* cub_temp;
  size_t cub_bytes;
};

Workspace Carve(void* base, int64_t num_rows, int64_t vocab_size, size_t cub_bytes) {
  const size_t n = static_cast<size_t>(num_rows * vocab_size);
  char* p = static_cast<char*>(base);
  Workspace w;
  w.keys_in = reinterpret_cast<float*>(p);
  p += AlignUp(n * sizeof(float));
  w.keys_out = reinterpret_cast<float*>(p);
  p += AlignUp(n * sizeof(float));
  w.ids_in = reinterpret_cast<int32_t*>(p);
  p += AlignUp(n * sizeof(int32_t));
  w.ids_out = reinterpret_cast<int32_t*>(p);
  p += AlignUp(n * sizeof(int32_t));
  w.offsets = reinterpret_cast<int32_t*>(p);
  p += AlignUp((num_rows + 1) * sizeof(int32_t));
  w.cub_temp = p;
  w.cub_bytes = cub_bytes;
  return w;
}

size_t FixedBytes(int64_t num_rows, int64_t vocab_size) {
  const size_t n = static_cast<size_t>(num_rows * vocab_size);
  return 2 * AlignUp(n * sizeof(float)) + 2 * AlignUp(n * sizeof(int32_t)) +
         AlignUp((num_rows + 1) * sizeof(int32_t));
}

cudaError_t CubSortBytes(int64_t num_rows, int64_t vocab_size, size_t* bytes) {
  *bytes = 0;
  return cub::DeviceSegmentedRadixSort::SortPairsDescending(
      nullptr, *bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<int>(num_rows * vocab_size), static_cast<int>(num_rows),
      static_cast<const int32_t*>(nullptr), static_cast<const int32_t*>(nullptr));
}

// Sort keys: the raw logits for greedy rows, logits / temperature (fp32, as the CPU) otherwise.
__global__ void PrepareKernel(const float* logits, int64_t vocab_size,
                              const SamplingRowParams* params, float* keys, int32_t* ids,
                              int32_t* offsets, int64_t num_rows) {
  const int64_t row = blockIdx.x;
  const float t = params[row].temperature;
  const bool scale = t >= kCudaGreedyTemperature && t != 1.0f;
  for (int64_t i = threadIdx.x; i < vocab_size; i += blockDim.x) {
    const float x = logits[row * vocab_size + i];
    keys[row * vocab_size + i] = scale ? x / t : x;
    ids[row * vocab_size + i] = static_cast<int32_t>(i);
  }
  if (threadIdx.x == 0) {
    offsets[row] = static_cast<int32_t>(row * vocab_size);
    if (row == 0) offsets[num_rows] = static_cast<int32_t>(num_rows * vocab_size);
  }
}

union SelectTemp {
  cub::BlockScan<double, kThreads>::TempStorage scan;
  cub::BlockReduce<double, kThreads>::TempStorage reduce_d;
  cub::BlockReduce<int, kThreads>::TempStorage reduce_i;
};

struct Reach {
  int64_t rank;
  double mass_through;
};

// The first rank r < n (keys sorted descending) whose cumulative weight sum_{i <= r} exp(key_i -
// max) reaches target (>= when inclusive, else >), with that cumulative weight; rank n - 1 and the
// total when rounding keeps it from being reached. All threads of the block must call it.
__device__ Reach FirstReach(const float* keys, int64_t n, float max_logit, double target,
                           bool inclusive, SelectTemp& temp) {
  __shared__ long long found_rank;
  __shared__ double found_mass;
  double carry = 0.0;
  for (int64_t base = 0; base < n; base += kThreads * kItems) {
    double w[kItems], thread_total = 0.0;
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int64_t idx = base + threadIdx.x * kItems + it;
      w[it] = idx < n ? exp(static_cast<double>(keys[idx]) - static_cast<double>(max_logit)) : 0.0;
      thread_total += w[it];
    }
    double prefix, chunk_total;
    cub::BlockScan<double, kThreads>(temp.scan).ExclusiveSum(thread_total, prefix, chunk_total);
    if (threadIdx.x == 0) found_rank = LLONG_MAX;
    __syncthreads();
    double run = carry + prefix, my_mass = 0.0;
    long long my_rank = LLONG_MAX;
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int64_t idx = base + threadIdx.x * kItems + it;
      if (idx >= n || my_rank != LLONG_MAX) continue;
      run += w[it];
      if (inclusive ? run >= target : run > target) {
        my_rank = idx;
        my_mass = run;
      }
    }
    if (my_rank != LLONG_MAX) atomicMin(&found_rank, my_rank);
    __syncthreads();
    if (my_rank != LLONG_MAX && my_rank == found_rank) found_mass = my_mass;
    __syncthreads();
    const Reach result{found_rank, found_mass};
    carry += chunk_total;
    __syncthreads();  // found_* and the scan storage are rewritten next
    if (result.rank != LLONG_MAX) return result;
  }
  return {n - 1, carry};
}

__global__ void __launch_bounds__(kThreads)
    SelectKernel(const float* sorted_keys, const int32_t* sorted_ids, int64_t vocab_size,
                 const SamplingRowParams* params, int32_t* token_ids) {
  __shared__ SelectTemp temp;
  __shared__ int num_kept;
  __shared__ double total_weight;
  const int64_t row = blockIdx.x;
  const float* keys = sorted_keys + row * vocab_size;
  const int32_t* ids = sorted_ids + row * vocab_size;
  const SamplingRowParams p = params[row];
  if (p.temperature < kCudaGreedyTemperature) {
    if (threadIdx.x == 0) token_ids[row] = ids[0];  // stable descending sort: ties to lower id
    return;
  }
  const float max_logit = keys[0];
  const double threshold = p.min_p > 0.0f
                               ? static_cast<double>(max_logit) + log(static_cast<double>(p.min_p))
                               : -INFINITY;
  int count = 0;
  for (int64_t i = threadIdx.x; i < vocab_size; i += blockDim.x) {
    count += !isinf(keys[i]) && static_cast<double>(keys[i]) >= threshold;
  }
  count = cub::BlockReduce<int, kThreads>(temp.reduce_i).Sum(count);
  if (threadIdx.x == 0) num_kept = count;
  __syncthreads();
  // At least the maximum survives every filter; 1 also keeps a row that breaks the REQUIRES (all
  // -inf) from indexing before the array.
  int64_t n = num_kept > 0 ? num_kept : 1;
  if (p.top_k > 0 && p.top_k < n) n = p.top_k;
  double weight = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    weight += exp(static_cast<double>(keys[i]) - static_cast<double>(max_logit));
  }
  weight = cub::BlockReduce<double, kThreads>(temp.reduce_d).Sum(weight);
  if (threadIdx.x == 0) total_weight = weight;
  __syncthreads();
  double total = total_weight;
  __syncthreads();  // temp is reused by FirstReach
  if (p.top_p < 1.0f) {
    const Reach kept = FirstReach(keys, n, max_logit, static_cast<double>(p.top_p) * total, true, temp);
    n = kept.rank + 1;
    total = kept.mass_through;
  }
  const double u = PhiloxUniform(p.seed, p.position);
  const Reach drawn = FirstReach(keys, n, max_logit, u * total, false, temp);
  if (threadIdx.x == 0) token_ids[row] = ids[drawn.rank];
}

__global__ void ArgmaxKernel(const float* logits, int64_t vocab_size, int32_t* token_ids) {
  __shared__ float best_v[kThreads / 32];
  __shared__ int32_t best_i[kThreads / 32];
  const float* row = logits + blockIdx.x * vocab_size;
  float best = -INFINITY;
  int32_t best_id = INT_MAX;
  for (int64_t i = threadIdx.x; i < vocab_size; i += blockDim.x) {
    if (row[i] > best || (row[i] == best && i < best_id)) {
      best = row[i];
      best_id = static_cast<int32_t>(i);
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best, offset);
    const int32_t id = __shfl_xor_sync(0xffffffffu, best_id, offset);
    if (v > best || (v == best && id < best_id)) {
      best = v;
      best_id = id;
    }
  }
  if (threadIdx.x % 32 == 0) {
    best_v[threadIdx.x / 32] = best;
    best_i[threadIdx.x / 32] = best_id;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kThreads / 32; ++w) {
    if (best_v[w] > best_v[0] || (best_v[w] == best_v[0] && best_i[w] < best_i[0])) {
      best_v[0] = best_v[w];
      best_i[0] = best_i[w];
    }
  }
  token_ids[blockIdx.x] = best_i[0] == INT_MAX ? 0 : best_i[0];  // all NaN: id 0
}

__global__ void UniformKernel(const uint64_t* seeds, const uint64_t* positions, int64_t n,
                              double* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = PhiloxUniform(seeds[i], positions[i]);
  }
}

bool ShapeOk(int64_t num_rows, int64_t vocab_size) {
  return num_rows >= 0 && vocab_size > 0 && num_rows * vocab_size < INT_MAX &&
         internal::FitsGridX(num_rows);
}

}  // namespace

cudaError_t SamplingWorkspaceBytes(int64_t num_rows, int64_t vocab_size, size_t* bytes) {
  *bytes = 0;
  if (!ShapeOk(num_rows, vocab_size)) return cudaErrorInvalidValue;
  size_t cub_bytes = 0;
  cudaError_t err = CubSortBytes(num_rows, vocab_size, &cub_bytes);
  if (err != cudaSuccess) return err;
  *bytes = FixedBytes(num_rows, vocab_size) + AlignUp(cub_bytes);
  return cudaSuccess;
}

cudaError_t LaunchSampleTokens(const float* logits, int64_t num_rows, int64_t vocab_size,
                               const SamplingRowParams* params, void* workspace,
                               size_t workspace_bytes, int32_t* token_ids, cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  if (!ShapeOk(num_rows, vocab_size)) return cudaErrorInvalidValue;
  size_t cub_bytes = 0;
  cudaError_t err = CubSortBytes(num_rows, vocab_size, &cub_bytes);
  if (err != cudaSuccess) return err;
  if (workspace_bytes < FixedBytes(num_rows, vocab_size) + cub_bytes) return cudaErrorInvalidValue;
  const Workspace w = Carve(workspace, num_rows, vocab_size, cub_bytes);
  const unsigned grid = static_cast<unsigned>(num_rows);
  PrepareKernel<<<grid, kThreads, 0, stream>>>(logits, vocab_size, params, w.keys_in, w.ids_in,
                                               w.offsets, num_rows);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  size_t temp_bytes = w.cub_bytes;
  err = cub::DeviceSegmentedRadixSort::SortPairsDescending(
      w.cub_temp, temp_bytes, w.keys_in, w.keys_out, w.ids_in, w.ids_out,
      static_cast<int>(num_rows * vocab_size), static_cast<int>(num_rows), w.offsets,
      w.offsets + 1, 0, static_cast<int>(sizeof(float) * 8), stream);
  if (err != cudaSuccess) return err;
  SelectKernel<<<grid, kThreads, 0, stream>>>(w.keys_out, w.ids_out, vocab_size, params, token_ids);
  return cudaGetLastError();
}

namespace {

__global__ void __launch_bounds__(kThreads)
    PenaltiesKernel(float* logits, int64_t vocab_size, const PenaltyRowParams* rows,
                    const PenaltyEntry* entries) {
  const PenaltyRowParams p = rows[blockIdx.x];
  float* row = logits + p.row * vocab_size;
  for (int32_t e = threadIdx.x; e < p.num_entries; e += kThreads) {
    const PenaltyEntry entry = entries[p.first_entry + e];
    if (entry.token_id < 0 || entry.token_id >= vocab_size) continue;
    float logit = row[entry.token_id];
    if (p.repetition != 1.0f) {
      logit = logit > 0.0f ? __fdiv_rn(logit, p.repetition) : __fmul_rn(logit, p.repetition);
    }
    if (entry.output_count > 0) {
      logit = __fsub_rn(logit, __fmul_rn(p.frequency, static_cast<float>(entry.output_count)));
      logit = __fsub_rn(logit, p.presence);
    }
    row[entry.token_id] = logit;
  }
}

// A (logit, id) candidate; "better" = larger logit, then lower id.
struct Candidate {
  float logit;
  int32_t id;
};
struct BetterOf {
  __device__ Candidate operator()(const Candidate& a, const Candidate& b) const {
    if (a.id < 0) return b;
    if (b.id < 0) return a;
    return (a.logit > b.logit || (a.logit == b.logit && a.id < b.id)) ? a : b;
  }
};
struct MaxOf {
  __device__ float operator()(float a, float b) const { return a > b ? a : b; }
};

__global__ void __launch_bounds__(kThreads)
    LogprobsKernel(const float* logits, int64_t vocab_size, const int64_t* rows,
                   const int32_t* chosen, int32_t num_top, float* chosen_logprob,
                   int32_t* top_ids, float* top_logprobs) {
  __shared__ typename cub::BlockReduce<float, kThreads>::TempStorage reduce_f;
  __shared__ typename cub::BlockReduce<double, kThreads>::TempStorage reduce_d;
  __shared__ typename cub::BlockReduce<Candidate, kThreads>::TempStorage reduce_c;
  __shared__ float row_max;
  __shared__ double log_z;
  __shared__ Candidate previous;
  const int64_t r = blockIdx.x;
  const float* row = logits + rows[r] * vocab_size;
  float local_max = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab_size; v += kThreads) local_max = fmaxf(local_max, row[v]);
  const float block_max = cub::BlockReduce<float, kThreads>(reduce_f).Reduce(local_max, MaxOf());
  if (threadIdx.x == 0) row_max = block_max;
  __syncthreads();
  double local_sum = 0.0;
  if (!isinf(row_max)) {
    for (int64_t v = threadIdx.x; v < vocab_size; v += kThreads) {
      local_sum += exp(static_cast<double>(row[v]) - static_cast<double>(row_max));
    }
  }
  const double sum = cub::BlockReduce<double, kThreads>(reduce_d).Sum(local_sum);
  if (threadIdx.x == 0) {
    log_z = isinf(row_max) ? static_cast<double>(row_max) : row_max + log(sum);
    chosen_logprob[r] = static_cast<float>(static_cast<double>(row[chosen[r]]) - log_z);
    previous = Candidate{INFINITY, -1};
  }
  __syncthreads();
  // Pass i finds the best candidate ranked after pass i - 1's pick.
  for (int32_t i = 0; i < num_top; ++i) {
    const Candidate after = previous;
    Candidate best{-INFINITY, -1};
    for (int64_t v = threadIdx.x; v < vocab_size; v += kThreads) {
      const Candidate c{row[v], static_cast<int32_t>(v)};
      const bool ranked_after = after.id < 0 || c.logit < after.logit ||
                                (c.logit == after.logit && c.id > after.id);
      if (ranked_after) best = BetterOf()(best, c);
    }
    const Candidate pick = cub::BlockReduce<Candidate, kThreads>(reduce_c).Reduce(best, BetterOf());
    if (threadIdx.x == 0) {
      top_ids[r * num_top + i] = pick.id;
      top_logprobs[r * num_top + i] =
          static_cast<float>(static_cast<double>(pick.logit) - log_z);
      previous = pick;
    }
    __syncthreads();
  }
}

}  // namespace

cudaError_t LaunchLogprobs(const float* logits, int64_t vocab_size, const int64_t* rows,
                           int64_t num_rows, const int32_t* chosen, int32_t num_top,
                           float* chosen_logprob, int32_t* top_ids, float* top_logprobs,
                           cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_rows) || vocab_size <= 0 || vocab_size > INT_MAX || num_top < 0 ||
      num_top > vocab_size) {
    return cudaErrorInvalidValue;
  }
  LogprobsKernel<<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(
      logits, vocab_size, rows, chosen, num_top, chosen_logprob, top_ids, top_logprobs);
  return cudaGetLastError();
}

cudaError_t LaunchApplyPenalties(float* logits, int64_t vocab_size, const PenaltyRowParams* rows,
                                 int64_t num_rows, const PenaltyEntry* entries,
                                 cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_rows) || vocab_size <= 0) return cudaErrorInvalidValue;
  PenaltiesKernel<<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(logits, vocab_size,
                                                                            rows, entries);
  return cudaGetLastError();
}

cudaError_t LaunchArgmax(const float* logits, int64_t num_rows, int64_t vocab_size,
                         int32_t* token_ids, cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  if (!internal::FitsGridX(num_rows) || vocab_size <= 0 || vocab_size > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  ArgmaxKernel<<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(logits, vocab_size,
                                                                         token_ids);
  return cudaGetLastError();
}

cudaError_t LaunchSamplingUniform(const uint64_t* seeds, const uint64_t* positions, int64_t n,
                                  double* out, cudaStream_t stream) {
  if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
  UniformKernel<<<internal::GridFor(n, kThreads), kThreads, 0, stream>>>(seeds, positions, n, out);
  return cudaGetLastError();
}

}  // namespace switchyard::kernels::cuda
