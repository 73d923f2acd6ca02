// Logging: spdlog behind a few project macros, so call sites stay short and the library can be
// configured (level, pattern) in one place. Lines that concern a request or a step carry its id:
// SY_LOG_INFO("req={} step={} finished", request_id, step_id).
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "spdlog/spdlog.h"

namespace switchyard {

// Sets the process-wide level from a name: trace, debug, info, warn, error, off.
// Returns INVALID_ARGUMENT for an unknown name.
absl::Status SetLogLevel(std::string_view level);

// Sets the pattern (with the process name) and sends logs to stderr. Call once from main().
void InitLogging(std::string_view process_name);

}  // namespace switchyard

#define SY_LOG_TRACE(...) SPDLOG_TRACE(__VA_ARGS__)
#define SY_LOG_DEBUG(...) ::spdlog::debug(__VA_ARGS__)
#define SY_LOG_INFO(...) ::spdlog::info(__VA_ARGS__)
#define SY_LOG_WARN(...) ::spdlog::warn(__VA_ARGS__)
#define SY_LOG_ERROR(...) ::spdlog::error(__VA_ARGS__)
