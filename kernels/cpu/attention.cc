#include "kernels/cpu/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace switchyard::kernels::cpu {

void WriteKvCache(const float* k, const float* v, const int64_t* slots, int64_t num_tokens,
                  int64_t kv_dim, float* k_cache, float* v_cache) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::memcpy(k_cache + slots[t] * kv_dim, k + t * kv_dim, kv_dim * sizeof(float));
    std::memcpy(v_cache + slots[t] * kv_dim, v + t * kv_dim, kv_dim * sizeof(float));
  }
}

namespace {

// One query row of one head against keys [key_begin, key_end) of a sequence.
void AttendOne(const float* q_row, const float* k_cache, const float* v_cache,
               const int32_t* block_table, int64_t key_begin, int64_t key_end, int64_t kv_head,
               int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale,
               std::vector<float>& scores, float* out_row) {
  const int64_t kv_dim = num_kv_heads * head_dim;
  const int64_t num_keys = key_end - key_begin;
  scores.resize(num_keys);
  float max_score = -INFINITY;
  for (int64_t j = 0; j < num_keys; ++j) {
    const int64_t pos = key_begin + j;
    const int64_t slot = KvSlot(block_table, pos, block_size);
    const float* k_row = k_cache + slot * kv_dim + kv_head * head_dim;
    float dot = 0.0f;
    for (int64_t d = 0; d < head_dim; ++d) dot += q_row[d] * k_row[d];
    scores[j] = dot * scale;
    max_score = std::max(max_score, scores[j]);
  }
  double denom = 0.0;
  for (int64_t j = 0; j < num_keys; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    denom += scores[j];
  }
  std::fill(out_row, out_row + head_dim, 0.0f);
  const float inv_denom = static_cast<float>(1.0 / denom);
  for (int64_t j = 0; j < num_keys; ++j) {
    const int64_t pos = key_begin + j;
    const int64_t slot = KvSlot(block_table, pos, block_size);
    const float* v_row = v_cache + slot * kv_dim + kv_head * head_dim;
    const float p = scores[j] * inv_denom;
    for (int64_t d = 0; d < head_dim; ++d) out_row[d] += p * v_row[d];
  }
}

// Many queries of one sequence: gather its keys and values once, then two GEMMs per head
// (scores = Q K^T, out = P V) instead of a dot product per (query, key) pair.
void AttendSequenceGemm(const float* q, const float* k_cache, const float* v_cache,
                        const AttentionSeq& seq, int64_t num_heads, int64_t num_kv_heads,
                        int64_t head_dim, int64_t block_size, float scale, int64_t chunk_size,
                        float* out) {
  const int64_t kv_dim = num_kv_heads * head_dim, q_dim = num_heads * head_dim;
  const int64_t first_pos = seq.start_pos, last_pos = seq.start_pos + seq.num_q - 1;
  const int64_t key_begin = chunk_size > 0 ? first_pos - first_pos % chunk_size : 0;
  const int64_t num_keys = last_pos + 1 - key_begin;
  std::vector<float> keys(num_keys * kv_dim), values(num_keys * kv_dim);
  for (int64_t j = 0; j < num_keys; ++j) {
    const int64_t pos = key_begin + j;
    const int64_t slot = KvSlot(seq.block_table, pos, block_size);
    std::memcpy(&keys[j * kv_dim], k_cache + slot * kv_dim, kv_dim * sizeof(float));
    std::memcpy(&values[j * kv_dim], v_cache + slot * kv_dim, kv_dim * sizeof(float));
  }
  const int64_t group = num_heads / num_kv_heads;
  std::vector<float> scores(seq.num_q * num_keys);
  const float* q_seq = q + seq.q_row_begin * q_dim;
  float* out_seq = out + seq.q_row_begin * q_dim;
  for (int64_t h = 0; h < num_heads; ++h) {
    const int64_t kv_head = h / group;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, seq.num_q, num_keys, head_dim, scale,
                q_seq + h * head_dim, q_dim, keys.data() + kv_head * head_dim, kv_dim, 0.0f,
                scores.data(), num_keys);
    for (int64_t i = 0; i < seq.num_q; ++i) {
      const int64_t pos = first_pos + i;
      const int64_t lo = (chunk_size > 0 ? pos - pos % chunk_size : 0) - key_begin;
      const int64_t hi = pos - key_begin;  // inclusive
      float* row = &scores[i * num_keys];
      float max_score = -INFINITY;
      for (int64_t j = lo; j <= hi; ++j) max_score = std::max(max_score, row[j]);
      double denom = 0.0;
      for (int64_t j = 0; j < num_keys; ++j) {
        row[j] = (j >= lo && j <= hi) ? std::exp(row[j] - max_score) : 0.0f;
        denom += row[j];
      }
      const float inv_denom = static_cast<float>(1.0 / denom);
      for (int64_t j = lo; j <= hi; ++j) row[j] *= inv_denom;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, seq.num_q, head_dim, num_keys, 1.0f,
                scores.data(), num_keys, values.data() + kv_head * head_dim, kv_dim, 0.0f,
                out_seq + h * head_dim, q_dim);
  }
}

// Below this many queries per sequence the per-pair loop is cheaper than gathering for GEMMs.
constexpr int64_t kGemmMinQueries = 8;

}  // namespace

void PagedAttention(const float* q, const float* k_cache, const float* v_cache,
                    const AttentionSeq* seqs, int64_t num_seqs, int64_t num_heads,
                    int64_t num_kv_heads, int64_t head_dim, int64_t block_size, float scale,
                    int64_t chunk_size, float* out) {
  const int64_t group = num_heads / num_kv_heads;
  std::vector<float> scores;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq& seq = seqs[s];
    if (seq.num_q >= kGemmMinQueries) {
      AttendSequenceGemm(q, k_cache, v_cache, seq, num_heads, num_kv_heads, head_dim, block_size,
                         scale, chunk_size, out);
      continue;
    }
    for (int64_t i = 0; i < seq.num_q; ++i) {
      const int64_t pos = seq.start_pos + i;
      const int64_t key_begin = chunk_size > 0 ? pos - pos % chunk_size : 0;
      const int64_t row = seq.q_row_begin + i;
      for (int64_t h = 0; h < num_heads; ++h) {
        AttendOne(q + (row * num_heads + h) * head_dim, k_cache, v_cache, seq.block_table,
                  key_begin, pos + 1, h / group, num_kv_heads, head_dim, block_size, scale, scores,
                  out + (row * num_heads + h) * head_dim);
      }
    }
  }
}

}  // namespace switchyard::kernels::cpu
