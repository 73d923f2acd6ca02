#include "common/logging.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace switchyard {

absl::Status SetLogLevel(std::string_view level) {
  spdlog::level::level_enum parsed = spdlog::level::from_str(std::string(level));
  // spdlog maps unknown names to "off"; only accept "off" when it was asked for.
  if (parsed == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(absl::StrCat(
        "log level: expected one of trace, debug, info, warn, error, off; found '", std::string(level), "'"));
  }
  spdlog::set_level(parsed);
  return absl::OkStatus();
}

void InitLogging(std::string_view process_name) {
  auto logger = spdlog::stderr_color_mt(std::string(process_name));
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %n[%P] %v");
}

}  // namespace switchyard
