#pragma once
// The fields of /proc/<pid>/stat (or /proc/<pid>/task/<tid>/stat) that
// batond reads: a process's or a thread's state, parent and flags.

#include <sys/types.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

namespace baton {

struct ProcStat {
  char state = 0;           ///< R, S, D, Z, X, ...
  pid_t ppid = 0;           ///< the parent
  unsigned long flags = 0;  ///< PF_* (PF_EXITING = 0x4)
};

/// Reads `dir`/stat, `dir` a /proc/<pid> or /proc/<pid>/task/<tid>
/// directory. nullopt when it cannot be read or parsed; errno is then
/// ENOENT or ESRCH if the task is gone. Thread: any.
inline std::optional<ProcStat> read_proc_stat(const std::string& dir) {
  FILE* f = std::fopen((dir + "/stat").c_str(), "re");
  if (f == nullptr) return std::nullopt;
  char buf[1024];
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // "pid (comm) state ppid pgrp session tty_nr tpgid flags ...": comm may
  // hold anything, spaces and parentheses too, so fields are counted from
  // its last closing parenthesis.
  const char* rp = std::strrchr(buf, ')');
  ProcStat s;
  int ppid, pgrp, session, tty, tpgid;
  if (rp == nullptr ||
      std::sscanf(rp + 1, " %c %d %d %d %d %d %lu", &s.state, &ppid, &pgrp, &session, &tty, &tpgid, &s.flags) != 7) {
    errno = EINVAL;
    return std::nullopt;
  }
  s.ppid = ppid;
  return s;
}

}  // namespace baton
