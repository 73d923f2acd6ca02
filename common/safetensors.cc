#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/tensor_names.h"
#include "nlohmann/json.hpp"

namespace switchyard {
namespace {

using Json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeEntry {
  DType dtype;
  const char* name;
  int64_t size_bytes;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2},        {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8},        {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},          {DType::kU64, "U64", 8},
    {DType::kU32, "U32", 4},   {DType::kU16, "U16", 2},        {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1}, {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
};

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

uint32_t FloatBits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
float BitsFloat(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// Converts `count` elements at `src` (any alignment) to fp32.
void ConvertToFloat32(DType dtype, const uint8_t* src, size_t count, float* dst) {
  if (count == 0) return;  // dst may be null for an empty vector
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, count * 4);
    return;
  }
  for (size_t i = 0; i < count; ++i) {
    uint16_t v;
    std::memcpy(&v, src + 2 * i, 2);
    dst[i] = dtype == DType::kF16 ? HalfToFloat(v) : BFloat16ToFloat(v);
  }
}

absl::StatusOr<std::string> ReadSmallFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Validates one header entry; fills `info` and its [begin, end) within the data area.
absl::Status ParseEntry(const std::string& name, const Json& entry, uint64_t data_size_bytes,
                        TensorInfo* info, std::pair<uint64_t, uint64_t>* range) {
  auto bad = [&](std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", std::string(what)));
  };
  if (!entry.is_object()) return bad("header entry is not an object");
  auto dtype_it = entry.find("dtype");
  auto shape_it = entry.find("shape");
  auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || !dtype_it->is_string()) return bad("missing string 'dtype'");
  if (shape_it == entry.end() || !shape_it->is_array()) return bad("missing list 'shape'");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return bad("'data_offsets' must be two non-negative integers");
  }
  const std::string dtype_name = dtype_it->get<std::string>();
  const DTypeEntry* dtype = nullptr;
  for (const DTypeEntry& d : kDTypes) {
    if (dtype_name == d.name) dtype = &d;
  }
  if (dtype == nullptr) return bad(absl::StrCat("unknown dtype '", dtype_name, "'"));
  info->name = name;
  info->dtype = dtype->dtype;
  uint64_t num_elements = 1;
  for (const Json& dim : *shape_it) {
    if (!dim.is_number_unsigned()) return bad("shape entries must be non-negative integers");
    uint64_t d = dim.get<uint64_t>();
    if (d > (uint64_t{1} << 50) || __builtin_mul_overflow(num_elements, d, &num_elements) ||
        num_elements > (uint64_t{1} << 56)) {
      return bad("shape is too large");
    }
    info->shape.push_back(static_cast<int64_t>(d));
  }
  const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
  const uint64_t end = (*offsets_it)[1].get<uint64_t>();
  const uint64_t want_bytes = num_elements * static_cast<uint64_t>(dtype->size_bytes);
  if (end < begin || end - begin != want_bytes) {
    return bad(absl::StrCat("data_offsets [", begin, ",", end, "] hold ", end - begin,
                            " bytes, but dtype ", dtype_name, " shape ", ShapeString(info->shape),
                            " needs ", want_bytes));
  }
  if (end > data_size_bytes) {
    return absl::DataLossError(absl::StrCat("tensor '", name, "': data ends at byte ", end,
                                            " of the data area, which holds only ", data_size_bytes,
                                            " bytes (truncated file?)"));
  }
  *range = {begin, end};
  return absl::OkStatus();
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const DTypeEntry& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

int64_t DTypeSize(DType dtype) {
  for (const DTypeEntry& d : kDTypes) {
    if (d.dtype == dtype) return d.size_bytes;
  }
  return 0;
}

bool DTypeIsLoadable(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t TensorInfo::num_bytes() const { return num_elements() * DTypeSize(dtype); }

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1f;
  const uint32_t mantissa = h & 0x3ff;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return BitsFloat(sign | 0x7f800000 | (mantissa << 13));
  return BitsFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

float BFloat16ToFloat(uint16_t b) { return BitsFloat(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) {  // inf stays inf; NaN stays a quiet NaN
    return sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 | ((abs >> 13) & 0x3ff) : 0);
  }
  if (abs >= 0x477ff000) return sign | 0x7c00;  // >= 65520 rounds to inf
  if (abs < 0x38800000) {                       // below 2^-14: a half subnormal (or zero)
    if (abs <= 0x33000000) return sign;         // <= 2^-25 rounds to zero (ties to even)
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - exponent;  // 14..24
    uint32_t q = mantissa >> shift;
    const uint32_t rem = mantissa & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t h = (abs - 0x38000000) >> 13;  // rebias 127 -> 15
  const uint32_t rem = abs & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

uint16_t FloatToBFloat16(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  return static_cast<uint16_t>((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

// ----------------------------------------------------------------------------- SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string message = absl::StrCat("cannot open ", path.string(), ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::PermissionDeniedError(message);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a regular file"));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_bytes_ = static_cast<size_t>(st.st_size);
  if (file->size_bytes_ > 0) {
    void* map = ::mmap(nullptr, file->size_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(
          absl::StrCat(path.string(), ": mmap failed: ", std::strerror(err)));
    }
    file->data_ = static_cast<const uint8_t*>(map);
  }
  ::close(fd);  // the mapping keeps the file alive
  absl::Status status = file->ParseHeader();
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat(path.string(), ": ", status.message()));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_bytes_);
}

absl::Status SafetensorsFile::ParseHeader() {
  if (size_bytes_ < 8) {
    return absl::DataLossError(
        absl::StrCat("file is ", size_bytes_, " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | data_[i];
  if (header_bytes > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("header length ", header_bytes, " exceeds the ",
                                                   kMaxHeaderBytes, "-byte limit"));
  }
  if (8 + header_bytes > size_bytes_) {
    return absl::DataLossError(absl::StrCat("header length ", header_bytes, " but only ",
                                            size_bytes_ - 8, " bytes follow (truncated file?)"));
  }
  const char* text = reinterpret_cast<const char*>(data_ + 8);
  Json header = Json::parse(text, text + header_bytes, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::InvalidArgumentError("header is not a JSON object");
  }
  const uint64_t data_begin = 8 + header_bytes;
  const uint64_t data_size_bytes = size_bytes_ - data_begin;
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, std::string>> by_offset;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return absl::InvalidArgumentError("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat("__metadata__ value of '", m.key(), "' is not a string"));
        }
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    TensorInfo info;
    std::pair<uint64_t, uint64_t> range;
    SY_RETURN_IF_ERROR(ParseEntry(it.key(), *it, data_size_bytes, &info, &range));
    by_offset.push_back({range, it.key()});
    ranges_[it.key()] = {data_begin + range.first, data_begin + range.second};
    tensors_[it.key()] = std::move(info);
  }
  std::sort(by_offset.begin(), by_offset.end());
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto& [prev_range, prev_name] = by_offset[i - 1];
    const auto& [range, name] = by_offset[i];
    if (range.first < prev_range.second && range.first != range.second &&
        prev_range.first != prev_range.second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensors '", prev_name, "' and '", name, "' overlap in the data area"));
    }
  }
  return absl::OkStatus();
}

std::span<const uint8_t> SafetensorsFile::RawBytes(std::string_view name) const {
  auto it = ranges_.find(std::string(name));
  SY_CHECK(it != ranges_.end());
  return {data_ + it->second.first, it->second.second - it->second.first};
}

// ----------------------------------------------------------------------------- Checkpoint

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::filesystem::path& dir) {
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  checkpoint->dir_ = dir;
  const std::filesystem::path index_path = dir / "model.safetensors.index.json";
  const std::filesystem::path single_path = dir / "model.safetensors";
  std::error_code ec;
  std::map<std::string, std::string> weight_map;
  std::set<std::string> shard_names;
  if (std::filesystem::exists(index_path, ec)) {
    SY_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path));
    Json index = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    auto bad = [&](std::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": ", std::string(what)));
    };
    if (index.is_discarded() || !index.is_object()) return bad("not a JSON object");
    auto map_it = index.find("weight_map");
    if (map_it == index.end() || !map_it->is_object()) return bad("no 'weight_map' object");
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      if (!it->is_string())
        return bad(absl::StrCat("weight_map['", it.key(), "'] is not a string"));
      std::string shard = it->get<std::string>();
      // Shards must sit in the directory itself: no paths that reach elsewhere.
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        return bad(absl::StrCat("weight_map['", it.key(), "'] names '", shard,
                                "', not a file name in the directory"));
      }
      weight_map[it.key()] = shard;
      shard_names.insert(shard);
    }
  } else if (std::filesystem::exists(single_path, ec)) {
    shard_names.insert("model.safetensors");
  } else {
    return absl::NotFoundError(
        absl::StrCat("no model.safetensors or model.safetensors.index.json in ", dir.string()));
  }
  std::map<std::string, size_t> file_idx_of_shard;
  for (const std::string& shard : shard_names) {
    SY_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(dir / shard));
    const size_t file_idx = checkpoint->files_.size();
    for (const auto& [name, info] : file->tensors()) {
      auto [it, inserted] = checkpoint->file_of_tensor_.emplace(name, file_idx);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            dir.string(), ": tensor '", name, "' is in both ",
            checkpoint->files_[it->second]->path().filename().string(), " and ", shard));
      }
    }
    file_idx_of_shard[shard] = file_idx;
    checkpoint->files_.push_back(std::move(file));
  }
  for (const auto& [name, shard] : weight_map) {
    auto it = checkpoint->file_of_tensor_.find(name);
    if (it == checkpoint->file_of_tensor_.end() || it->second != file_idx_of_shard[shard]) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": tensor '", name,
                                                     "' is mapped to ", shard,
                                                     ", which does not hold it"));
    }
  }
  return checkpoint;
}

const TensorInfo* Checkpoint::Find(std::string_view name) const {
  auto it = file_of_tensor_.find(name);
  if (it == file_of_tensor_.end()) return nullptr;
  const auto& tensors = files_[it->second]->tensors();
  auto info = tensors.find(std::string(name));
  return info == tensors.end() ? nullptr : &info->second;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(file_of_tensor_.size());
  for (const auto& [name, file_idx] : file_of_tensor_) names.push_back(name);
  return names;
}

absl::Status Checkpoint::LoadFloat32(std::string_view name, std::span<const int64_t> expected_shape,
                                     std::vector<float>* out) const {
  const int64_t num_rows = expected_shape.empty() ? 1 : expected_shape[0];
  return LoadFloat32Rows(name, expected_shape, 0, num_rows, out);
}

absl::Status Checkpoint::LoadFloat32Rows(std::string_view name,
                                         std::span<const int64_t> expected_shape, int64_t row_begin,
                                         int64_t row_end, std::vector<float>* out) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("tensor ", std::string(name), ": not in checkpoint ", dir_.string()));
  }
  if (!std::equal(info->shape.begin(), info->shape.end(), expected_shape.begin(),
                  expected_shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", std::string(name), ": shape ",
                                                   ShapeString(info->shape), ", config expects ",
                                                   ShapeString(expected_shape)));
  }
  if (!DTypeIsLoadable(info->dtype)) {
    return absl::UnimplementedError(absl::StrCat("tensor ", std::string(name), ": dtype ",
                                                 std::string(DTypeName(info->dtype)),
                                                 " is not supported (F32, F16, BF16 are)"));
  }
  const int64_t num_rows = info->shape.empty() ? 1 : info->shape[0];
  if (row_begin < 0 || row_begin > row_end || row_end > num_rows) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", std::string(name), ": rows [",
                                                   row_begin, ",", row_end, ") outside [0,",
                                                   num_rows, ")"));
  }
  const int64_t row_elements = num_rows == 0 ? 0 : info->num_elements() / num_rows;
  const int64_t element_bytes = DTypeSize(info->dtype);
  std::span<const uint8_t> bytes = files_[file_of_tensor_.find(name)->second]->RawBytes(name);
  const size_t count = static_cast<size_t>((row_end - row_begin) * row_elements);
  out->resize(count);
  ConvertToFloat32(info->dtype, bytes.data() + row_begin * row_elements * element_bytes, count,
                   out->data());
  bytes_loaded_.fetch_add(count * element_bytes, std::memory_order_relaxed);
  return absl::OkStatus();
}

uint64_t Checkpoint::bytes_loaded() const { return bytes_loaded_.load(std::memory_order_relaxed); }

// ----------------------------------------------------------------------------- validation

absl::Status ValidateCheckpoint(const ModelConfig& config, const Checkpoint& checkpoint) {
  std::vector<std::string> missing, wrong_shape, bad_dtype, extra;
  std::set<std::string> expected_names;
  for (const TensorSpec& spec : ExpectedTensors(config)) {
    expected_names.insert(spec.name);
    const TensorInfo* info = checkpoint.Find(spec.name);
    if (info == nullptr) {
      missing.push_back(spec.name);
    } else if (info->shape != spec.shape) {
      wrong_shape.push_back(absl::StrCat(spec.name, ": shape ", ShapeString(info->shape),
                                         ", config expects ", ShapeString(spec.shape)));
    } else if (!DTypeIsLoadable(info->dtype)) {
      bad_dtype.push_back(absl::StrCat(spec.name, ": ", std::string(DTypeName(info->dtype))));
    }
  }
  auto ignored = [&](const std::string& name) {
    for (const std::string& prefix : config.ignored_tensor_prefixes) {
      if (name.rfind(prefix, 0) == 0) return true;
    }
    const std::string inv_freq = "rotary_emb.inv_freq";
    if (name.size() >= inv_freq.size() &&
        name.compare(name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0) {
      return true;
    }
    return config.tie_word_embeddings &&
           (name == "lm_head.weight" || name == "language_model.lm_head.weight");
  };
  for (const std::string& name : checkpoint.TensorNames()) {
    if (!expected_names.count(name) && !ignored(name)) extra.push_back(name);
  }
  if (missing.empty() && wrong_shape.empty() && bad_dtype.empty() && extra.empty()) {
    return absl::OkStatus();
  }
  std::string message =
      absl::StrCat("checkpoint ", checkpoint.dir().string(),
                   " does not match config.json (model_type ", config.model_type, ")");
  auto list = [&](std::string_view what, const std::vector<std::string>& items) {
    if (items.empty()) return;
    absl::StrAppend(&message, "; ", items.size(), " ", std::string(what), ": ",
                    absl::StrJoin(items, ", "));
  };
  list("missing", missing);
  list("with the wrong shape", wrong_shape);
  list("with an unsupported dtype", bad_dtype);
  list("extra", extra);
  return absl::InvalidArgumentError(message);
}

// ----------------------------------------------------------------------------- writing

absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const TensorToWrite& t : tensors) {
    int64_t num_elements = 1;
    for (int64_t d : t.shape) num_elements *= d;
    if (t.name == "__metadata__" || !names.insert(t.name).second ||
        static_cast<int64_t>(t.values.size()) != num_elements || !DTypeIsLoadable(t.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path.string(), ": tensor '", t.name,
                       "' is duplicated, reserved, not F32/F16/BF16, or has ", t.values.size(),
                       " values for shape ", ShapeString(t.shape)));
    }
    const uint64_t size_bytes = num_elements * DTypeSize(t.dtype);
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + size_bytes}}};
    offset += size_bytes;
  }
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  const std::filesystem::path tmp_path = path.string() + ".tmp";
  std::ofstream out(tmp_path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp_path.string()));
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));
  out.write(reinterpret_cast<const char*>(length), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  std::vector<uint16_t> half;
  for (const TensorToWrite& t : tensors) {
    if (t.dtype == DType::kF32) {
      out.write(reinterpret_cast<const char*>(t.values.data()),
                static_cast<std::streamsize>(t.values.size() * 4));
      continue;
    }
    half.resize(t.values.size());
    for (size_t i = 0; i < t.values.size(); ++i) {
      half[i] = t.dtype == DType::kF16 ? FloatToHalf(t.values[i]) : FloatToBFloat16(t.values[i]);
    }
    out.write(reinterpret_cast<const char*>(half.data()),
              static_cast<std::streamsize>(half.size() * 2));
  }
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("error writing ", tmp_path.string()));
  std::error_code ec;
  std::filesystem::rename(tmp_path, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("rename to ", path.string(), ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace switchyard
