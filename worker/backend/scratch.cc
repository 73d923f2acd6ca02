#include "worker/backend/scratch.h"

#include <algorithm>

#include "common/status_macros.h"

namespace switchyard {

absl::StatusOr<Tensor> ScratchArena::Get(int slot_idx, std::vector<int64_t> shape) {
  return Get(slot_idx, backend_.activation_dtype(), std::move(shape));
}

absl::StatusOr<Tensor> ScratchArena::Get(int slot_idx, DType dtype, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (slot_idx >= static_cast<int>(slots_.size())) slots_.resize(slot_idx + 1);
  Tensor& slot = slots_[slot_idx];
  if (!slot.empty() && slot.dtype() != dtype) slot = Tensor();
  if (slot.empty() || slot.num_elements() < n) {
    // Grow by at least 1.5x so a slowly growing batch does not reallocate every step.
    const int64_t capacity = std::max<int64_t>(n, slot.empty() ? n : slot.num_elements() * 3 / 2);
    SY_ASSIGN_OR_RETURN(slot, backend_.Empty(dtype, {std::max<int64_t>(capacity, 1)}));
  }
  return slot.Rows(0, n).Reshape(std::move(shape));
}

}  // namespace switchyard
