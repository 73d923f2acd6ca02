// Tensor: an n-d array that lives in one backend's memory (host memory for the CPU backend, device
// memory for CUDA). Copies and views share the storage (reference counted), so a view of some rows
// stays valid as long as it is held.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/safetensors.h"

namespace switchyard {

class Tensor {
 public:
  Tensor() = default;
  // `data` points into `storage` (which keeps it alive).
  Tensor(std::shared_ptr<void> storage, void* data, DType dtype, std::vector<int64_t> shape);

  bool empty() const { return data_ == nullptr; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int idx) const { return shape_[idx]; }
  int64_t rank() const { return static_cast<int64_t>(shape_.size()); }
  int64_t num_elements() const;
  int64_t num_bytes() const { return num_elements() * DTypeSize(dtype_); }

  void* data() const { return data_; }
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }

  // View of rows [row_begin, row_end) of the outermost dimension.
  Tensor Rows(int64_t row_begin, int64_t row_end) const;
  // Same storage, another shape with the same number of elements (SY_CHECKed).
  Tensor Reshape(std::vector<int64_t> shape) const;

  std::string ShapeString() const;  // "[2,64]"

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  std::vector<int64_t> shape_;
};

}  // namespace switchyard
