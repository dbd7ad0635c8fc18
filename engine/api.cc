// The C API over the embedding API. Handles are checked against a registry of
// live ones, so a stale or made-up pointer gets BATON_EINVAL, not a crash.

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "baton/baton.h"
#include "baton/engine.h"  // declarations only: no DPDK
#include "ipc/client.h"
#include "protocol/wire.h"
#include "runtime/readable.h"
#ifndef BATON_CLIENT_ONLY
#include "baton/ethdev.h"
#endif

// One handle type for both modes: an embedded engine, or a connection to
// batond (libbaton-client is built with BATON_CLIENT_ONLY: no engine, no DPDK).
struct baton_engine {
#ifndef BATON_CLIENT_ONLY
  std::unique_ptr<baton::Engine> engine;
#endif
  std::unique_ptr<baton::ipc::Client> client;
  /// The fork count when it was made (a fork's child connects or starts
  /// its own: the connection and the engine's threads are the parent's).
  uint64_t forks = 0;
  /// BATON_COW_QUIESCENT (embedded mode): every commit is quiescent.
  bool quiescent = false;
  /// Calls in flight on it and its segments, from any thread: baton_stop
  /// waits for them before it frees what they use. Registry::mu.
  uint32_t calls = 0;
};

struct baton_segment {
  baton_t* owner;
  baton::Segment* segment;              ///< embedded mode
  baton::ipc::ClientSegment* remote;    ///< daemon mode
  uint32_t calls = 0;                   ///< in flight on it (baton_unregister waits); Registry::mu
};

namespace {

using baton::Errc;

thread_local std::string last_error;

// Which handles are alive. The one process-wide table in the engine: the C
// API cannot otherwise tell a live handle from a freed one.
struct Registry {
  std::mutex mu;
  std::condition_variable calls_ended;  ///< a Call ended (stop and unregister wait on it)
  std::unordered_set<baton_t*> batons;
  std::unordered_set<baton_segment_t*> segments;
};
Registry& registry() {
  static Registry r;
  return r;
}

/// fork()s this process has made (counted in the child): a handle made
/// before one is the parent's. The registry's mutex is held across the
/// fork, so a child never inherits it locked by a thread it does not have.
std::atomic<uint64_t> g_forks{0};
uint64_t forks_now() {
  static const bool counting = [] {
    return pthread_atfork([] { registry().mu.lock(); }, [] { registry().mu.unlock(); },
                          [] {
                            g_forks.fetch_add(1);
                            registry().mu.unlock();
                          }) == 0;
  }();
  (void)counting;
  return g_forks.load(std::memory_order_relaxed);
}

int set_error(Errc code, std::string message) {
  last_error = std::move(message);
  return -static_cast<int>(code);
}
int set_error(const baton::Error& e) { return set_error(e.code, e.message); }
int ok() {
  last_error.clear();
  return 0;
}

int forked() {
  return set_error(Errc::kInvalidArgument,
                   "the handle was made before this process forked: a child connects (or starts) its own");
}

/// A call on a live handle, from any thread, for as long as it runs:
/// baton_stop and baton_unregister wait for the calls on what they free.
/// A handle not alive, or made before this process was forked, is refused
/// (error(): the call's return, with the message set).
class Call {
 public:
  explicit Call(baton_t* b) {
    std::lock_guard lock(registry().mu);
    if (b == nullptr || registry().batons.count(b) == 0) {
      rc_ = set_error(Errc::kInvalidArgument, "unknown baton handle");
    } else if (b->forks != forks_now()) {
      rc_ = forked();
    } else {
      b_ = b;
      ++b->calls;
    }
  }
  explicit Call(baton_segment_t* s) {
    std::lock_guard lock(registry().mu);
    if (s == nullptr || registry().segments.count(s) == 0) {
      rc_ = set_error(Errc::kInvalidArgument, "unknown segment handle");
    } else if (s->owner->forks != forks_now()) {
      rc_ = forked();
    } else {
      s_ = s;
      b_ = s->owner;
      ++s->calls;
      ++b_->calls;
    }
  }
  ~Call() {
    if (b_ == nullptr) return;
    {
      std::lock_guard lock(registry().mu);
      --b_->calls;
      if (s_ != nullptr) --s_->calls;
    }
    registry().calls_ended.notify_all();
  }
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;
  int error() const { return rc_; }

 private:
  baton_t* b_ = nullptr;
  baton_segment_t* s_ = nullptr;
  int rc_ = 0;
};

int check_name(const char* name) {
  if (name == nullptr) return set_error(Errc::kInvalidArgument, "name is NULL");
  const size_t len = strnlen(name, BATON_NAME_MAX + 1);
  if (len == 0) return set_error(Errc::kInvalidArgument, "name is empty");
  if (len > BATON_NAME_MAX) return set_error(Errc::kInvalidArgument, "name is longer than 63 bytes");
  if (!baton::wire::valid_name(std::string_view(name, len)))
    return set_error(Errc::kInvalidArgument, "name must be printable ASCII without spaces");
  return 0;
}

baton_segment_t* track(baton_t* b, baton::Segment* seg, baton::ipc::ClientSegment* remote = nullptr) {
  auto* s = new baton_segment{b, seg, remote};
  std::lock_guard lock(registry().mu);
  registry().segments.insert(s);
  return s;
}

void insert(baton_t* b) {
  b->forks = forks_now();
  std::lock_guard lock(registry().mu);
  registry().batons.insert(b);
}

// register, open and load: the same checks, then the daemon or the engine.
int open_segment(baton_t* b, baton::ipc::Op op, const char* name, uint64_t size, baton_segment_t** out,
                 int* restored, uint64_t* generation) {
  // *out is written on success only: a caller that reuses the variable of
  // a handle it holds keeps that handle when the call fails.
  const Call call(b);
  if (call.error() != 0) return call.error();
  if (out == nullptr) return set_error(Errc::kInvalidArgument, "out is NULL");
  if (int rc = check_name(name); rc != 0) return rc;
  if (b->client) {
    auto s = b->client->open(op, name, size);
    if (!s) return set_error(s.error());
    *out = track(b, nullptr, *s);
    if (restored != nullptr) *restored = (*s)->restored;
    if (generation != nullptr) *generation = (*s)->generation;
    return ok();
  }
#ifndef BATON_CLIENT_ONLY
  baton::Result<baton::OpenResult> r = baton::fail(Errc::kInternal, "unknown operation");
  switch (op) {
    case baton::ipc::Op::kCreate: {
      auto seg = b->engine->create(name, size);
      r = seg ? baton::Result<baton::OpenResult>(baton::OpenResult{*seg, baton::OpenOutcome::kCreated, 0})
              : tl::unexpected(seg.error());
      break;
    }
    case baton::ipc::Op::kOpen: r = b->engine->open(name, size); break;
    case baton::ipc::Op::kLoad: r = b->engine->load(name); break;
    default: break;
  }
  if (!r) return set_error(r.error());
  *out = track(b, r->segment);
  if (restored != nullptr) *restored = r->outcome == baton::OpenOutcome::kRestored;
  if (generation != nullptr) *generation = r->generation;
  return ok();
#else
  return set_error(Errc::kInternal, "no engine");
#endif
}

#ifndef BATON_CLIENT_ONLY
// "PEER=ethdev:DEVARGS"
baton::Result<std::unique_ptr<baton::Link>> parse_link(const char* spec) {
  if (spec == nullptr) return baton::fail(Errc::kInvalidArgument, "link is NULL");
  std::string s(spec);
  const auto eq = s.find('=');
  const auto colon = s.find(':');
  if (eq == std::string::npos || colon == std::string::npos || colon < eq)
    return baton::fail(Errc::kInvalidArgument, "link '", s, "' is not PEER=ethdev:DEVARGS");
  unsigned peer = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + eq, peer);
  if (ec != std::errc() || p != s.data() + eq || peer == 0 || peer >= 0xFFFF)
    return baton::fail(Errc::kInvalidArgument, "link '", s, "': peer must be a node id 1..65534");
  const std::string driver = s.substr(eq + 1, colon - eq - 1);
  if (driver != "ethdev") return baton::fail(Errc::kInvalidArgument, "link '", s, "': unknown driver '", driver, "'");
  baton::ethdev::PortConfig pc;
  pc.device = s.substr(colon + 1);
  pc.peer = static_cast<uint16_t>(peer);
  return baton::ethdev::open_port(pc);
}
#endif

}  // namespace

extern "C" {

void baton_config_init(baton_config_t* config) {
  if (config == nullptr) return;
  std::memset(config, 0, sizeof *config);
  const baton::EngineConfig d;
  config->node_id = d.node_id;
  config->replication_factor = d.replication_factor;
  config->retain = d.retain;
  config->max_segment_size = d.max_segment_size;
}

int baton_connect(const char* socket_path, baton_t** out) {
  if (socket_path == nullptr || out == nullptr) return set_error(Errc::kInvalidArgument, "socket_path and out must not be NULL");
  *out = nullptr;
  auto c = baton::ipc::Client::connect(socket_path);
  if (!c) return set_error(c.error());
  auto* b = new baton_engine{};
  b->client = std::move(*c);
  insert(b);
  *out = b;
  return ok();
}

int baton_start(const baton_config_t* config, const char* const* links, size_t n_links, baton_t** out) {
#ifdef BATON_CLIENT_ONLY
  (void)config, (void)links, (void)n_links;
  if (out != nullptr) *out = nullptr;
  return set_error(Errc::kUnavailable, "libbaton-client has no embedded engine: use baton_connect()");
#else
  if (config == nullptr || out == nullptr) return set_error(Errc::kInvalidArgument, "config and out must not be NULL");
  if (n_links > 0 && links == nullptr) return set_error(Errc::kInvalidArgument, "links is NULL");
  *out = nullptr;
  baton::EngineConfig c;
  c.node_id = config->node_id;
  c.replication_factor = config->replication_factor;
  c.retain = config->retain;
  c.max_segment_size = config->max_segment_size;
  c.idle = config->spin ? baton::IdlePolicy::kSpin : baton::IdlePolicy::kAdaptive;
  c.track_writes = config->no_write_tracking == 0 && baton::ipc::track_writes_allowed();
  if (config->copy_on_write > BATON_COW_QUIESCENT)
    return set_error(Errc::kInvalidArgument,
                     "copy_on_write must be 0, BATON_COW (1), BATON_COW_PROTECT_AHEAD (2) or BATON_COW_QUIESCENT (3), "
                     "not " + std::to_string(config->copy_on_write));
  if (config->copy_on_write != 0) c.snapshot_mode = baton::EngineConfig::SnapshotMode::kCopyOnWrite;
  c.cow_protect_ahead = config->copy_on_write >= BATON_COW_PROTECT_AHEAD;
  std::vector<std::unique_ptr<baton::Link>> ls;
  for (size_t i = 0; i < n_links; ++i) {
    auto l = parse_link(links[i]);
    if (!l) return set_error(l.error());
    ls.push_back(std::move(*l));
  }
  auto engine = baton::Engine::start(c, std::move(ls));
  if (!engine) return set_error(engine.error());
  auto* b = new baton_engine{};
  b->engine = std::move(*engine);
  b->quiescent = config->copy_on_write == BATON_COW_QUIESCENT;
  insert(b);
  *out = b;
  return ok();
#endif
}

void baton_stop(baton_t* b) {
  std::vector<baton_segment_t*> segments;
  {
    std::lock_guard lock(registry().mu);
    // A fork's child leaves its parent's alone: shutting the connection
    // would shut the parent's.
    if (b == nullptr || registry().batons.count(b) == 0 || b->forks != forks_now()) return;
    registry().batons.erase(b);  // from here on, new calls are refused
    for (auto it = registry().segments.begin(); it != registry().segments.end();) {
      if ((*it)->owner == b) {
        segments.push_back(*it);
        it = registry().segments.erase(it);
      } else {
        ++it;
      }
    }
  }
  // Calls in flight on other threads end before what they use is freed:
  // in daemon mode at once (the connection is shut, as if batond had
  // gone), an embedded engine's when they return (a wait, by its timeout).
  if (b->client) b->client->interrupt();
  {
    std::unique_lock lock(registry().mu);
    registry().calls_ended.wait(lock, [b] { return b->calls == 0; });
  }
  for (baton_segment_t* s : segments) delete s;
  delete b;
}

int baton_register(baton_t* b, const char* name, uint64_t size, baton_segment_t** out) {
  return open_segment(b, baton::ipc::Op::kCreate, name, size, out, nullptr, nullptr);
}

int baton_open(baton_t* b, const char* name, uint64_t size, baton_segment_t** out, int* restored,
               uint64_t* generation) {
  return open_segment(b, baton::ipc::Op::kOpen, name, size, out, restored, generation);
}

int baton_load(baton_t* b, const char* name, baton_segment_t** out, uint64_t* generation) {
  return open_segment(b, baton::ipc::Op::kLoad, name, 0, out, nullptr, generation);
}

void* baton_segment_data(baton_segment_t* s) {
  const Call call(s);
  if (call.error() != 0) return nullptr;
  if (s->remote != nullptr) return s->remote->data;
#ifndef BATON_CLIENT_ONLY
  return s->owner->engine->data(s->segment).data();
#endif
  return nullptr;
}

uint64_t baton_segment_size(baton_segment_t* s) {
  const Call call(s);
  if (call.error() != 0) return 0;
  if (s->remote != nullptr) return s->remote->size;
#ifndef BATON_CLIENT_ONLY
  return s->owner->engine->size(s->segment);
#endif
  return 0;
}

int baton_commit(baton_segment_t* s, uint64_t* generation) { return baton_commit_ranges(s, nullptr, 0, generation); }

int baton_commit_ranges(baton_segment_t* s, const baton_range_t* ranges, size_t n, uint64_t* generation) {
  const Call call(s);
  if (call.error() != 0) return call.error();
  if (ranges == nullptr && n > 0) return set_error(Errc::kInvalidArgument, "ranges is NULL but n is not 0");
  // More ranges than bytes in the largest segment can only be a mistake.
  constexpr size_t kMaxRanges = size_t{1} << 30;
  if (n > kMaxRanges)
    return set_error(Errc::kInvalidArgument, "too many ranges: " + std::to_string(n) + " (at most " +
                                                 std::to_string(kMaxRanges) + ")");
  std::vector<std::pair<uint64_t, uint64_t>> written;
  try {
    written.reserve(n);
  } catch (const std::exception&) {
    return set_error(Errc::kNoMemory, "no memory for " + std::to_string(n) + " ranges");
  }
  for (size_t i = 0; i < n; ++i) written.emplace_back(ranges[i].offset, ranges[i].length);
  // A commit that names ranges but none at all still says "nothing else changed".
  if (ranges != nullptr && n == 0) written.emplace_back(0, 0);
  baton::Result<uint64_t> g = baton::fail(Errc::kInternal, "no engine");
  if (s->remote != nullptr) {
    for (const auto& [off, len] : written)  // batond checks too; say it here, with the numbers
      if (off > s->remote->size || len > s->remote->size - off)
        return set_error(Errc::kInvalidArgument, "written range past the end of the segment");
    g = s->owner->client->commit(s->remote, written);
  }
#ifndef BATON_CLIENT_ONLY
  else g = s->owner->engine->commit(s->segment,
                                    baton::CommitOptions{.written = written, .quiescent = s->owner->quiescent});
#endif
  if (!g) return set_error(g.error());
  if (generation != nullptr) *generation = *g;
  return ok();
}

int baton_wait(baton_segment_t* s, uint64_t generation, uint32_t k, uint32_t timeout_ms) {
  const Call call(s);
  if (call.error() != 0) return call.error();
  baton::Result<void> r = baton::fail(Errc::kInternal, "no engine");
  if (s->remote != nullptr) r = s->owner->client->wait(s->remote, generation, k, timeout_ms);
#ifndef BATON_CLIENT_ONLY
  else r = s->owner->engine->wait_replicated(s->segment, generation, k, std::chrono::milliseconds(timeout_ms));
#endif
  if (!r) return set_error(r.error());
  return ok();
}

int baton_unregister(baton_segment_t* s) {
  baton_t* b = nullptr;
  {
    std::unique_lock lock(registry().mu);
    if (s == nullptr || registry().segments.count(s) == 0)
      return set_error(Errc::kInvalidArgument, "unknown segment handle");
    if (s->owner->forks != forks_now()) return forked();
    registry().segments.erase(s);  // new calls on it are refused from here on
    b = s->owner;
    ++b->calls;  // a call on the baton_t: baton_stop waits for it
    // The calls on it in flight (a commit, a wait) end first.
    registry().calls_ended.wait(lock, [s] { return s->calls == 0; });
  }
  baton::Result<void> r = baton::fail(Errc::kInternal, "no engine");
  if (s->remote != nullptr) r = b->client->close(s->remote);
#ifndef BATON_CLIENT_ONLY
  else r = b->engine->close(s->segment);
#endif
  delete s;
  {
    std::lock_guard lock(registry().mu);
    --b->calls;
  }
  registry().calls_ended.notify_all();
  if (!r) return set_error(r.error());
  return ok();
}

int baton_delete(baton_t* b, const char* name) {
  const Call call(b);
  if (call.error() != 0) return call.error();
  if (int rc = check_name(name); rc != 0) return rc;
  baton::Result<void> r = baton::fail(Errc::kInternal, "no engine");
  if (b->client) r = b->client->remove(name);
#ifndef BATON_CLIENT_ONLY
  else if (b->engine) r = b->engine->remove(name);
#endif
  if (!r) return set_error(r.error());
  return ok();
}

int baton_report(baton_t* b, const char* name, double value) {
  const Call call(b);
  if (call.error() != 0) return call.error();
  if (name == nullptr) return set_error(Errc::kInvalidArgument, "metric name is NULL");
  if (!b->client) return set_error(Errc::kInvalidArgument, "metrics go to a batond: this is an embedded engine");
  if (auto r = b->client->report(name, value); !r) return set_error(r.error());
  return ok();
}

int baton_await_promotion(int timeout_ms) {
  // The runner (failover/runner.cc) writes one byte to the pipe it handed
  // this process when it promotes it, and closes its end when it retires it.
  static std::atomic<bool> promoted{false};
  if (promoted.load()) return ok();
  const char* env = std::getenv("BATON_PROMOTE_FD");
  if (env == nullptr || *env == '\0') return ok();  // not a standby instance
  int fd = -1;
  const auto [end, ec] = std::from_chars(env, env + std::strlen(env), fd);
  if (ec != std::errc{} || *end != '\0' || fd < 0 || fcntl(fd, F_GETFD) < 0)
    return set_error(Errc::kInvalidArgument, std::string("BATON_PROMOTE_FD=") + env + " is not an open descriptor");
  const uint64_t deadline = timeout_ms < 0 ? 0 : baton::now_ns() + uint64_t(timeout_ms) * 1'000'000;
  for (;;) {
    const baton::Readable r = baton::wait_readable(fd, deadline);
    if (r == baton::Readable::kError)
      return set_error(Errc::kIo, std::string("waiting for promotion: ") + std::strerror(errno));
    if (r == baton::Readable::kTimeout)
      return set_error(Errc::kTimeout, "not promoted within " + std::to_string(timeout_ms) + " ms");
    char byte = 0;
    const ssize_t got = ::read(fd, &byte, 1);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (got == 1 && byte == 'P') {
      ::close(fd);
      promoted.store(true);
      unsetenv("BATON_PROMOTE_FD");  // nor do the processes it starts wait
      return ok();
    }
    return set_error(Errc::kUnavailable, "batond retired this standby instance (or went away)");
  }
}

const char* baton_strerror(int err) {
  if (err > 0 || err < BATON_EPERM) return "unknown error";
  return baton::errc_name(static_cast<Errc>(-err));
}

const char* baton_last_error(void) { return last_error.c_str(); }

}  // extern "C"
