#include "common/log.h"

#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace baton {
namespace {

LogLevel initial_level() noexcept {
  const char* env = std::getenv("BATON_LOG");
  if (env == nullptr) return LogLevel::kWarn;
  if (std::strcmp(env, "debug") == 0) return LogLevel::kDebug;
  if (std::strcmp(env, "info") == 0) return LogLevel::kInfo;
  if (std::strcmp(env, "error") == 0) return LogLevel::kError;
  return LogLevel::kWarn;
}

std::atomic<int> threshold{static_cast<int>(initial_level())};
constexpr const char* kLevelNames[] = {"error", "warn", "info", "debug"};
constexpr int kSyslogPriorities[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
std::atomic<bool> to_syslog{false};

}  // namespace

void set_log_level(LogLevel level) noexcept { threshold.store(static_cast<int>(level)); }
LogLevel log_level() noexcept { return static_cast<LogLevel>(threshold.load(std::memory_order_relaxed)); }

void set_log_syslog(bool on) noexcept { to_syslog.store(on); }

void log(LogLevel level, const char* fmt, ...) noexcept {
  char line[1024];
  if (to_syslog.load(std::memory_order_relaxed)) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    syslog(kSyslogPriorities[static_cast<int>(level)], "%s", line);
    return;
  }
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  int n = std::snprintf(line, sizeof line, "%ld.%06ld baton[%d] %s: ", static_cast<long>(ts.tv_sec),
                        ts.tv_nsec / 1000, static_cast<int>(getpid()), kLevelNames[static_cast<int>(level)]);
  va_list ap;
  va_start(ap, fmt);
  n += std::vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  if (n > static_cast<int>(sizeof line) - 2) n = sizeof line - 2;
  line[n++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, line, n);
  (void)ignored;
}

}  // namespace baton
