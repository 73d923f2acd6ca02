// Reading and writing the safetensors format, and Hugging Face checkpoint directories (one
// model.safetensors, or shards listed in model.safetensors.index.json).
//
// Files are memory-mapped; nothing is read until a tensor is asked for, so a worker that loads only
// its experts touches only their bytes. bytes_loaded() reports what was read.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace switchyard {

// Every dtype a safetensors header may name. Only kF32, kF16 and kBF16 can be loaded (converted
// to fp32); files holding others still open, and loading such a tensor is UNIMPLEMENTED.
enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU64, kU32, kU16, kU8, kBool,
                   kF8E4M3, kF8E5M2 };

std::string_view DTypeName(DType dtype);  // "F32", "F16", "BF16", ... as in safetensors headers
int64_t DTypeSize(DType dtype);
// True for the dtypes LoadFloat32 converts (F32, F16, BF16).
bool DTypeIsLoadable(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  int64_t num_elements() const;
  int64_t num_bytes() const;
};

// One memory-mapped .safetensors file. Thread-compatible; reads are const and thread-safe.
class SafetensorsFile {
 public:
  // Maps the file and validates the header: size prefix, JSON, dtypes, shapes, offsets within the
  // file and non-overlapping. INVALID_ARGUMENT (or DATA_LOSS for a truncated file) with the file
  // name and what was wrong; NOT_FOUND if missing.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Raw bytes of a tensor inside the mapping (not necessarily aligned). REQUIRES: name is in
  // tensors().
  std::span<const uint8_t> RawBytes(std::string_view name) const;

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader();
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;  // whole-file mapping
  size_t size_bytes_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::pair<size_t, size_t>> ranges_;  // absolute [begin, end)
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors, or the shards named by model.safetensors.index.json.
// Thread-safe for concurrent loads.
class Checkpoint {
 public:
  // NOT_FOUND when neither file exists; INVALID_ARGUMENT for a bad index or a tensor the index
  // names that its shard lacks (or a tensor in two shards).
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  std::vector<std::string> TensorNames() const;

  // Converts the tensor to fp32 into `out` (resized). `expected_shape` must match exactly, else
  // INVALID_ARGUMENT "tensor NAME: shape [a,b], config expects [c,d]". NOT_FOUND if absent.
  absl::Status LoadFloat32(std::string_view name, std::span<const int64_t> expected_shape,
                           std::vector<float>* out) const;
  // Converts rows [row_begin, row_end) of the outermost dimension only (e.g. some experts of a
  // fused [E, ...] tensor), counting only those bytes as loaded.
  absl::Status LoadFloat32Rows(std::string_view name, std::span<const int64_t> expected_shape,
                               int64_t row_begin, int64_t row_end, std::vector<float>* out) const;

  // Bytes of tensor data converted so far by this object (all threads).
  uint64_t bytes_loaded() const;

 private:
  Checkpoint() = default;
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t, std::less<>> file_of_tensor_;
  mutable std::atomic<uint64_t> bytes_loaded_{0};
};

// Checks the checkpoint against the tensors the config expects: every missing tensor, every extra
// tensor, every shape mismatch and unsupported dtype is listed in one INVALID_ARGUMENT message.
// Not extra: tensors under config.ignored_tensor_prefixes (Llama 4's vision tower), a tied
// lm_head, and the rotary_emb.inv_freq buffers old exports carry.
absl::Status ValidateCheckpoint(const ModelConfig& config, const Checkpoint& checkpoint);

// Writes a safetensors file (used by the model maker and tests). Tensors are written in the given
// order, packed back to back as the format requires; the header is padded with spaces so the data
// area starts 8-byte aligned. Optional __metadata__. Writes PATH.tmp, then renames it.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<float> values;  // converted to dtype on write
};
absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// fp16 / bf16 <-> fp32 conversions (round to nearest even on the way down).
float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToHalf(float f);
uint16_t FloatToBFloat16(float f);

}  // namespace switchyard
