#include "common/cli_support.h"

#include <filesystem>
#include <fstream>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace switchyard {

absl::StatusOr<std::vector<int32_t>> ParseIdList(std::string_view text, std::string_view what) {
  std::vector<int32_t> ids;
  const absl::string_view all(text.data(), text.size());  // absl's own string_view in this release
  if (absl::StripAsciiWhitespace(all).empty()) return ids;
  int item_idx = 0;
  for (absl::string_view item : absl::StrSplit(all, ',')) {
    item = absl::StripAsciiWhitespace(item);
    int32_t id = 0;
    if (!absl::SimpleAtoi(item, &id)) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(what),
                                                     ": expected comma-separated integers, item ",
                                                     item_idx, " is \"", item, "\""));
    }
    ids.push_back(id);
    ++item_idx;
  }
  return ids;
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code error;
  std::filesystem::rename(tmp, path, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace switchyard
