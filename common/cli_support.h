// Small helpers the command-line programs share: parsing a list of token ids, and writing a file
// that readers never see half-written.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace switchyard {

// "1, 2,30" -> {1, 2, 30}; blank -> {}. INVALID_ARGUMENT naming `what`, the item's index and its
// text for anything that is not an int32 (an empty item included).
absl::StatusOr<std::vector<int32_t>> ParseIdList(std::string_view text,
                                                 std::string_view what = "token ids");

// Writes `contents` to path + ".tmp" and renames it over `path`, so a reader sees the old file or
// the whole new one. INTERNAL naming the file on failure.
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

}  // namespace switchyard
