#pragma once
// Leveled logging to stderr. The daemon may redirect to syslog later; the
// engine only calls log().

#include <cstdarg>

namespace baton {

enum class LogLevel : int { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

/// Sets the process-wide threshold (default kWarn, or BATON_LOG=debug|info|warn|error).
void set_log_level(LogLevel level) noexcept;
LogLevel log_level() noexcept;

/// Sends log lines to syslog(3) instead of stderr (the caller opens the log).
void set_log_syslog(bool on) noexcept;

/// printf-style. Thread: any (one write(2) per line, lines do not interleave).
void log(LogLevel level, const char* fmt, ...) noexcept __attribute__((format(printf, 2, 3)));

}  // namespace baton

#define BATON_LOG(level, ...)                                                        \
  do {                                                                               \
    if (static_cast<int>(level) <= static_cast<int>(::baton::log_level())) ::baton::log(level, __VA_ARGS__); \
  } while (0)
#define BT_ERROR(...) BATON_LOG(::baton::LogLevel::kError, __VA_ARGS__)
#define BT_WARN(...) BATON_LOG(::baton::LogLevel::kWarn, __VA_ARGS__)
#define BT_INFO(...) BATON_LOG(::baton::LogLevel::kInfo, __VA_ARGS__)
#define BT_DEBUG(...) BATON_LOG(::baton::LogLevel::kDebug, __VA_ARGS__)
