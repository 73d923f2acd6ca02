#include "worker/backend/tensor.h"

#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace switchyard {

Tensor::Tensor(std::shared_ptr<void> storage, void* data, DType dtype, std::vector<int64_t> shape)
    : storage_(std::move(storage)), data_(data), dtype_(dtype), shape_(std::move(shape)) {}

int64_t Tensor::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

Tensor Tensor::Rows(int64_t row_begin, int64_t row_end) const {
  SY_CHECK(!shape_.empty() && row_begin >= 0 && row_begin <= row_end && row_end <= shape_[0]);
  const int64_t row_bytes = shape_[0] == 0 ? 0 : num_bytes() / shape_[0];
  std::vector<int64_t> shape = shape_;
  shape[0] = row_end - row_begin;
  return Tensor(storage_, static_cast<char*>(data_) + row_begin * row_bytes, dtype_,
                std::move(shape));
}

Tensor Tensor::Reshape(std::vector<int64_t> shape) const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  SY_CHECK(n == num_elements());
  return Tensor(storage_, data_, dtype_, std::move(shape));
}

std::string Tensor::ShapeString() const { return "[" + absl::StrJoin(shape_, ",") + "]"; }

}  // namespace switchyard
