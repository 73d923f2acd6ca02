// Reusable activation buffers: each slot keeps its largest allocation, so a steady stream of steps
// of similar shape allocates nothing after warm-up.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"

namespace switchyard {

// Not thread-safe; owned by the object whose forward pass uses it.
class ScratchArena {
 public:
  explicit ScratchArena(Backend& backend) : backend_(backend) {}
  // A tensor of `shape` in the backend's activation dtype backed by slot `slot_idx`'s storage
  // (grown when too small). The previous tensor handed out for that slot must no longer be used.
  absl::StatusOr<Tensor> Get(int slot_idx, std::vector<int64_t> shape);
  // The same in an explicit dtype (e.g. F32 logits); a slot that changes dtype is reallocated.
  absl::StatusOr<Tensor> Get(int slot_idx, DType dtype, std::vector<int64_t> shape);

 private:
  Backend& backend_;
  std::vector<Tensor> slots_;  // flat storage per slot
};

}  // namespace switchyard
