#include "storage/global_store.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <new>
#include <optional>
#include <tuple>
#include <vector>

#include "common/crc32c.h"
#include "common/log.h"
#include "protocol/wire.h"
#include "runtime/futex.h"

namespace baton {
namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'B', 'A', 'T', 'O', 'N', 'S', 'E', 'G'};

// File header, little-endian, followed by the segment's bytes.
struct Header {
  char magic[8];
  uint32_t version;
  uint32_t crc;  ///< CRC32C of the bytes
  uint64_t epoch;
  uint64_t generation;
  uint64_t size;
  uint16_t node;
  uint8_t name_len;
  char name[64];
};

// In pieces of at most 8 MiB, each one progress (GlobalStore::shut_down
// tells a slow file system from a hung one by it).
bool write_all(int fd, const void* p, size_t n, std::atomic<uint64_t>& progress_ns) {
  constexpr size_t kPiece = size_t{8} << 20;
  auto* b = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, b, std::min(n, kPiece));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    b += w;
    n -= static_cast<size_t>(w);
    progress_ns.store(now_ns(), std::memory_order_relaxed);
  }
  return true;
}

// "e<epoch>-g<generation>-n<node>.seg"
bool parse_name(const std::string& file, uint64_t* epoch, uint64_t* gen, unsigned* node) {
  return std::sscanf(file.c_str(), "e%lu-g%lu-n%u.seg", epoch, gen, node) == 3 &&
         file.size() > 4 && file.compare(file.size() - 4, 4, ".seg") == 0;
}

// A segment's directory: its name, with '/' and '%' escaped (%2F, %25) and
// a leading '.' too (%2E), so that every name is one entry of `dir` of its
// own: "a/." or "../x" once named another segment's directory, or one
// outside `dir` (an adversarial client's find). Other names are as given.
std::string path_component(std::string_view name) {
  std::string out;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (c == '/') out += "%2F";
    else if (c == '%') out += "%25";
    else if (c == '.' && i == 0) out += "%2E";
    else out += c;
  }
  return out;
}

std::string segment_dir(const std::string& dir, std::string_view name) { return dir + "/" + path_component(name); }

// Where a name that is escaped now kept its copies before (the name as a
// path), if that stays inside `dir` (no empty, "." or ".." component) and
// can be no other name's directory now: a path of two components or more,
// or one that begins with '.' (a name with '%' alone, "x%2Fy", was at what
// is now "x/y"'s directory: not looked at). Still read, since a header
// says whose copy it is, and marked by a delete, so that nothing stored
// before the escaping is lost or brought back. Writes go to
// segment_dir() only.
std::optional<std::string> legacy_dir(const std::string& dir, std::string_view name) {
  if (path_component(name) == name) return std::nullopt;
  if (name.find('/') == std::string_view::npos && name.front() != '.') return std::nullopt;
  for (size_t start = 0;;) {
    const size_t end = name.find('/', start);
    const std::string_view part = name.substr(start, end == std::string_view::npos ? end : end - start);
    if (part.empty() || part == "." || part == "..") return std::nullopt;
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return dir + "/" + std::string(name);
}

// The directories a name's copies and markers may be in: its own, and the
// one it had before the escaping.
std::vector<std::string> dirs_of(const std::string& dir, std::string_view name) {
  std::vector<std::string> dirs{segment_dir(dir, name)};
  if (auto legacy = legacy_dir(dir, name)) dirs.push_back(*legacy);
  return dirs;
}

// "deleted-e<epoch>": a delete marker (see the header).
bool parse_marker(const std::string& file, uint64_t* epoch) {
  int end = 0;
  return std::sscanf(file.c_str(), "deleted-e%lu%n", epoch, &end) == 1 && static_cast<size_t>(end) == file.size();
}

// The bytes of segment a copy's file holds (its size less the header), if
// it can be one newest() reads: 1..max_size of them.
std::optional<uint64_t> stored_size(const fs::path& file, uint64_t max_size) {
  std::error_code ec;
  const uint64_t bytes = fs::file_size(file, ec);
  if (ec || bytes <= sizeof(Header) || bytes - sizeof(Header) > max_size) return std::nullopt;
  return bytes - sizeof(Header);
}

void fsync_dir(const std::string& d) {
  const int dfd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

Result<std::unique_ptr<GlobalStore>> GlobalStore::open(const std::string& dir, uint32_t keep, uint16_t node,
                                                       uint64_t max_buffered) {
  if (dir.empty()) return fail(Errc::kInvalidArgument, "global storage directory is empty");
  if (keep == 0) return fail(Errc::kInvalidArgument, "global storage must keep at least 1 generation");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return fail(Errc::kIo, "cannot create ", dir, ": ", ec.message());
  std::unique_ptr<GlobalStore> s(new GlobalStore(dir, keep, node, max_buffered));  // and its copier and writer
  s->copier_ = std::thread([raw = s.get()] { raw->copy_loop(); });
  s->writer_ = std::thread([raw = s.get()] { raw->write_loop(); });
  return s;
}

GlobalStore::~GlobalStore() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  written_cv_.notify_all();
  if (copier_.joinable()) copier_.join();
  if (writer_.joinable()) writer_.join();
}

bool GlobalStore::shut_down(std::unique_ptr<GlobalStore> store, uint64_t patience_ns) {
  if (!store) return true;
  {
    std::lock_guard lock(store->mu_);
    store->stopping_ = true;
  }
  store->cv_.notify_all();
  store->written_cv_.notify_all();
  // The copier only copies memory (and must be done before the slots it
  // reads go): it is always waited for.
  if (store->copier_.joinable()) store->copier_.join();
  store->progress_ns_.store(now_ns());
  for (;;) {
    {
      std::lock_guard lock(store->mu_);
      if (store->writer_done_) break;
      // The writer's mark first, then the clock: a mark made in between
      // is older than that reading, never newer (no wrap-around).
      const uint64_t progress = store->progress_ns_.load();
      if (const uint64_t now = now_ns(); now > progress && now - progress > patience_ns) {
        // Left to the writer, which deletes the store if it ever returns.
        store->abandoned_ = true;
        BT_ERROR("global storage: a write to %s made no progress for %lu ms: stopping without it (its thread is left "
                 "behind, blocked in the file system; what it had not written is not stored)",
                 store->dir_.c_str(), static_cast<unsigned long>(patience_ns / 1'000'000));
        store->writer_.detach();
        (void)store.release();
        return false;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;  // ~GlobalStore joins the writer, which has returned
}

bool GlobalStore::Job::set_name(std::string_view n) noexcept {
  if (n.size() >= sizeof name_buf) return false;
  std::memcpy(name_buf, n.data(), n.size());
  name_len = static_cast<uint8_t>(n.size());
  return true;
}

bool GlobalStore::submit(Job job, uint64_t seg_id) {
  if (job.name_len == 0 || job.pin == nullptr || job.data == nullptr) return false;
  job.seg_id = seg_id;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
    if (count_ == queue_.size()) {  // the writer logs it (the caller is the poll loop)
      skip_locked(job);
      return false;
    }
    queue_[(head_ + count_) % queue_.size()] = job;
    ++count_;
  }
  cv_.notify_one();
  return true;
}

void GlobalStore::copy_loop() {
  // Named, so `top -H` tells file I/O from polling (and tests can tell its
  // allocations, which are allowed, from the data path's, which are not).
  prctl(PR_SET_NAME, "baton-global-c", 0, 0, 0);
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || count_ != 0; });
      if (count_ == 0) {  // stopping, and every queued slot is copied
        copier_done_ = true;
        written_cv_.notify_all();
        return;
      }
      job = queue_[head_];
      head_ = (head_ + 1) % queue_.size();
      --count_;
      // Room for it: it replaces a waiting copy of its segment, or the
      // copies waiting stay within the budget (the larger of max_buffered_
      // and two of this size: the one being written and this one).
      const auto same = waiting_for(job.name());
      const uint64_t replaced = same != waiting_.end() ? same->job.size : 0;
      if (waiting_bytes_ - replaced + job.size > std::max(max_buffered_, 2 * job.size)) {
        skip_locked(job);
        job.pin->fetch_sub(1);
        continue;
      }
      waiting_bytes_ += job.size;  // reserved: the copy is made outside the lock
      unskip_locked(job);
    }
    Copy c;
    c.bytes.reset(new (std::nothrow) std::byte[job.size]);
    if (!c.bytes) {  // no memory for it now: skipped, as when the budget is full
      job.pin->fetch_sub(1);
      std::lock_guard lock(mu_);
      waiting_bytes_ -= job.size;
      skip_locked(job);
      continue;
    }
    std::memcpy(c.bytes.get(), job.data, job.size);
    job.pin->fetch_sub(1);  // the slot may be reused from here on
    c.crc = crc32c(c.bytes.get(), job.size);
    c.job = job;
    c.job.data = nullptr;
    c.job.pin = nullptr;
    std::lock_guard lock(mu_);
    const auto same = waiting_for(job.name());
    if (same == waiting_.end()) {
      waiting_.push_back(std::move(c));
    } else if (std::tie(same->job.epoch, same->job.generation) > std::tie(job.epoch, job.generation)) {
      waiting_bytes_ -= job.size;  // a newer one waits already (another epoch's)
    } else {
      waiting_bytes_ -= same->job.size;
      *same = std::move(c);  // the newest generation of a segment is what counts
    }
    written_cv_.notify_one();
  }
}

std::vector<GlobalStore::Copy>::iterator GlobalStore::waiting_for(std::string_view name) {
  return std::find_if(waiting_.begin(), waiting_.end(), [&](const Copy& w) { return w.job.name() == name; });
}

void GlobalStore::skip_locked(const Job& job) {
  skipped_.fetch_add(1);
  ++skips_unlogged_;
  const auto end = skipped_ids_.begin() + static_cast<ptrdiff_t>(skipped_count_);
  const auto it = std::find_if(skipped_ids_.begin(), end, [&](const Skip& k) { return k.seg_id == job.seg_id; });
  if (it != end) {
    if (std::tie(job.epoch, job.generation) > std::tie(it->epoch, it->generation))
      *it = {job.seg_id, job.epoch, job.generation};
  } else if (skipped_count_ < skipped_ids_.size()) {
    skipped_ids_[skipped_count_++] = {job.seg_id, job.epoch, job.generation};
  } else {
    skipped_overflow_ = true;
  }
  has_skipped_.store(true, std::memory_order_relaxed);
}

void GlobalStore::unskip_locked(const Job& job) {
  const auto end = skipped_ids_.begin() + static_cast<ptrdiff_t>(skipped_count_);
  const auto it = std::find_if(skipped_ids_.begin(), end, [&](const Skip& k) { return k.seg_id == job.seg_id; });
  if (it == end || std::tie(job.epoch, job.generation) < std::tie(it->epoch, it->generation)) return;
  *it = *(end - 1);
  --skipped_count_;
  has_skipped_.store(skipped_count_ != 0 || skipped_overflow_, std::memory_order_relaxed);
}

void GlobalStore::sweep_again() {
  std::lock_guard lock(mu_);
  skipped_overflow_ = true;
  has_skipped_.store(true, std::memory_order_relaxed);
}

size_t GlobalStore::skipped_segments(std::span<uint64_t> out, bool& all) {
  std::lock_guard lock(mu_);
  all = skipped_overflow_;
  skipped_overflow_ = false;
  const size_t n = std::min(out.size(), skipped_count_);
  for (size_t i = 0; i < n; ++i) out[i] = skipped_ids_[i].seg_id;
  // Those that did not fit in `out` stay for the next call.
  std::copy(skipped_ids_.begin() + static_cast<ptrdiff_t>(n),
            skipped_ids_.begin() + static_cast<ptrdiff_t>(skipped_count_), skipped_ids_.begin());
  skipped_count_ -= n;
  has_skipped_.store(skipped_count_ != 0, std::memory_order_relaxed);
  return n;
}

void GlobalStore::write_loop() {
  prctl(PR_SET_NAME, "baton-global", 0, 0, 0);
  std::unique_lock lock(mu_);
  for (;;) {
    // The oldest copy whose time has come; at the stop, a copy that failed
    // before is given up (its next try could be 30 s away).
    const uint64_t now = now_ns();
    uint64_t next = UINT64_MAX;
    auto ready = waiting_.end();
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (stopping_ && it->failures != 0) {
        waiting_bytes_ -= it->job.size;
        it = waiting_.erase(it);
        continue;
      }
      if (it->not_before_ns <= now) {
        ready = it;
        break;
      }
      next = std::min(next, it->not_before_ns);
      ++it;
    }
    if (ready == waiting_.end()) {
      if (copier_done_ && waiting_.empty()) {  // stopping, and everything copied is written
        writer_done_ = true;
        if (!abandoned_) return;
        lock.unlock();
        delete this;  // shut_down gave up on this thread and left the store to it
        return;
      }
      if (next == UINT64_MAX) written_cv_.wait(lock);
      else written_cv_.wait_for(lock, std::chrono::nanoseconds(next - now));
      continue;
    }
    Copy c = std::move(*ready);
    waiting_.erase(ready);
    lock.unlock();
    progress_ns_.store(now_ns(), std::memory_order_relaxed);
    auto ok = write(c);
    if (ok && *ok) {
      prune(c.job.name());
      written_.fetch_add(1);
    } else if (ok) {
      dropped_.fetch_add(1);
    } else {
      failed_.fetch_add(1);
    }
    note(ok ? std::nullopt : std::optional<std::string>(ok.error().to_string()));
    lock.lock();
    const bool newer = waiting_for(c.job.name()) != waiting_.end();
    if (!ok && !newer && !stopping_) {  // tried again later, unless a newer generation came meanwhile
      c.failures = std::min(c.failures + 1, 16u);
      c.not_before_ns = now_ns() + std::min<uint64_t>(uint64_t{1'000'000'000} << (c.failures - 1), 30'000'000'000);
      waiting_.push_back(std::move(c));
    } else {
      waiting_bytes_ -= c.job.size;
    }
  }
}

void GlobalStore::note(const std::optional<std::string>& error) {
  // A failing directory fails every generation of every segment: the log
  // says so when it starts, once a minute while it lasts, and when it ends
  // (the counts and the newest error are in `batonctl status`).
  constexpr uint64_t kEvery = 60'000'000'000;
  const uint64_t now = now_ns();
  std::unique_lock lock(mu_);
  if (error) {
    const bool started = !failing_;
    failing_ = true;
    if (started) failing_since_ns_ = now;
    last_error_ = *error;
    last_error_ns_ = now;
    ++failures_unlogged_;
    if (started || now - last_warned_ns_ >= kEvery) {
      const uint64_t n = failures_unlogged_;
      failures_unlogged_ = 0;
      last_warned_ns_ = now;
      lock.unlock();
      if (started)
        BT_WARN("global storage: %s (generations are not stored until it works again; batonctl status shows it)",
                error->c_str());
      else
        BT_WARN("global storage: still failing, %lu more writes failed: %s", static_cast<unsigned long>(n),
                error->c_str());
      lock.lock();
    }
  } else if (failing_) {
    failing_ = false;
    last_write_ns_ = now;
    const uint64_t n = failures_unlogged_;
    failures_unlogged_ = 0;
    lock.unlock();
    BT_INFO("global storage: writing again in %s (%lu failed writes since the last warning)", dir_.c_str(),
            static_cast<unsigned long>(n));
    lock.lock();
  } else {
    last_write_ns_ = now;
  }
  if (skips_unlogged_ != 0 && now - last_skip_warned_ns_ >= kEvery) {
    const uint64_t n = skips_unlogged_;
    skips_unlogged_ = 0;
    last_skip_warned_ns_ = now;
    lock.unlock();
    BT_WARN("global storage: %lu generations not stored: the writer is behind (%s is slower than the commits, "
            "or hangs); each such segment's newest generation is offered again until it is taken",
            static_cast<unsigned long>(n), dir_.c_str());
  }
}

GlobalStore::Health GlobalStore::health() const {
  Health h;
  h.written = written_.load();
  h.failed = failed_.load();
  h.skipped = skipped_.load();
  h.dropped = dropped_.load();
  std::lock_guard lock(mu_);
  h.failing = failing_;
  h.failing_since_ns = failing_ ? failing_since_ns_ : 0;
  h.last_error = last_error_;
  h.last_error_ns = last_error_ns_;
  h.last_write_ns = last_write_ns_;
  return h;
}

Result<bool> GlobalStore::write(const Copy& c) {
  const Job& job = c.job;
  const std::string sdir = segment_dir(dir_, job.name());
  if (deleted_epoch(dir_, job.name()) >= job.epoch) return false;  // deleted while queued
  std::error_code ec;
  fs::create_directories(sdir, ec);
  if (ec) return fail(Errc::kIo, "cannot create ", sdir, ": ", ec.message());
  char file[96];
  std::snprintf(file, sizeof file, "e%lu-g%lu-n%u.seg", static_cast<unsigned long>(job.epoch),
                static_cast<unsigned long>(job.generation), node_);
  const std::string final_path = sdir + "/" + file, tmp = final_path + ".tmp";
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = 1;
  h.crc = c.crc;
  h.epoch = job.epoch;
  h.generation = job.generation;
  h.size = job.size;
  h.node = node_;
  h.name_len = job.name_len;
  std::memcpy(h.name, job.name_buf, job.name_len);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fail(Errc::kIo, "open ", tmp, ": ", std::strerror(errno));
  const bool ok = write_all(fd, &h, sizeof h, progress_ns_) && write_all(fd, c.bytes.get(), job.size, progress_ns_) &&
                  ::fsync(fd) == 0;
  ::close(fd);
  progress_ns_.store(now_ns(), std::memory_order_relaxed);
  if (!ok || ::rename(tmp.c_str(), final_path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return fail(Errc::kIo, "write ", final_path, ": ", std::strerror(errno));
  }
  // A delete that marked the name while this file was written may have
  // listed the directory before the rename: the file removes itself. (The
  // delete writes its marker before it lists; this checks after renaming:
  // one of the two sees the other.)
  if (deleted_epoch(dir_, job.name()) >= job.epoch) {
    ::unlink(final_path.c_str());
    return false;
  }
  fsync_dir(sdir);  // the rename is durable only once the directory is
  return true;
}

void GlobalStore::prune(std::string_view name) {
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, std::string>> mine;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(segment_dir(dir_, name), ec)) {
    uint64_t epoch, gen;
    unsigned node;
    const std::string file = e.path().filename().string();
    if (parse_name(file, &epoch, &gen, &node) && node == node_) mine.push_back({{epoch, gen}, e.path().string()});
    // A temp file of this node's is a write killed half-way (this thread
    // is the only writer of this node's files here).
    if (file.size() > 4 && file.compare(file.size() - 4, 4, ".tmp") == 0 &&
        parse_name(file.substr(0, file.size() - 4), &epoch, &gen, &node) && node == node_) {
      std::error_code rm;
      fs::remove(e.path(), rm);
    }
  }
  std::sort(mine.begin(), mine.end(), [](auto& a, auto& b) { return a.first > b.first; });
  for (size_t i = keep_; i < mine.size(); ++i) fs::remove(mine[i].second, ec);
}

std::optional<GlobalCopy> GlobalStore::newest(const std::string& dir, std::string_view name, uint64_t max_size,
                                               uint64_t min_epoch) {
  if (dir.empty() || !wire::valid_name(name)) return std::nullopt;
  std::vector<GlobalCopy> copies;
  std::error_code ec;
  for (const std::string& sdir : dirs_of(dir, name))
    for (const auto& e : fs::directory_iterator(sdir, ec)) {
      GlobalCopy c;
      unsigned node;
      const std::string file = e.path().filename().string();
      if (uint64_t marked; parse_marker(file, &marked)) {  // a delete: copies at or below it do not count
        min_epoch = std::max(min_epoch, marked + 1);
        continue;
      }
      if (!parse_name(file, &c.epoch, &c.generation, &node)) continue;  // temp files too
      const auto size = stored_size(e.path(), max_size);
      if (!size) continue;
      c.path = e.path().string();
      c.name = std::string(name);
      c.size = *size;
      copies.push_back(std::move(c));
    }
  std::erase_if(copies, [&](const GlobalCopy& c) { return c.epoch < min_epoch; });
  std::sort(copies.begin(), copies.end(),
            [](auto& a, auto& b) { return std::tie(a.epoch, a.generation) > std::tie(b.epoch, b.generation); });
  // The newest whose header and checksum hold; a corrupt file is passed over.
  for (auto& c : copies) {
    std::vector<std::byte> probe(c.size);
    auto ok = read(c, probe);
    if (ok) return c;
    BT_WARN("global storage: skipping %s: %s", c.path.c_str(), ok.error().to_string().c_str());
  }
  return std::nullopt;
}

GlobalStore::Listing GlobalStore::list(const std::string& dir, std::string_view name, uint64_t min_epoch,
                                       uint64_t max_size) {
  Listing out;
  if (dir.empty() || !wire::valid_name(name)) return out;
  min_epoch = std::max(min_epoch, deleted_epoch(dir, name) + 1);
  std::error_code ec;
  for (const std::string& sdir : dirs_of(dir, name))
    for (const auto& e : fs::directory_iterator(sdir, ec)) {
      uint64_t epoch, gen;
      unsigned node;
      if (!parse_name(e.path().filename().string(), &epoch, &gen, &node) || epoch < min_epoch) continue;
      if (max_size != UINT64_MAX && !stored_size(e.path(), max_size)) continue;  // as newest() sees them
      ++out.copies;
      out.newest_epoch = std::max(out.newest_epoch, epoch);
    }
  return out;
}

uint64_t GlobalStore::deleted_epoch(const std::string& dir, std::string_view name) {
  if (dir.empty() || !wire::valid_name(name)) return 0;
  uint64_t newest = 0;
  std::error_code ec;
  for (const std::string& sdir : dirs_of(dir, name))
    for (const auto& e : fs::directory_iterator(sdir, ec)) {
      uint64_t epoch;
      if (parse_marker(e.path().filename().string(), &epoch)) newest = std::max(newest, epoch);
    }
  return newest;
}

Result<void> GlobalStore::remove(const std::string& dir, std::string_view name, uint64_t epoch) {
  if (dir.empty() || !wire::valid_name(name) || epoch == 0)
    return fail(Errc::kInvalidArgument, "bad global storage name or epoch");
  const bool marked = deleted_epoch(dir, name) >= epoch;
  // Its own directory, made if need be; the one it had before the
  // escaping only if it is there.
  for (const std::string& sdir : dirs_of(dir, name)) {
    std::error_code ec;
    if (sdir == segment_dir(dir, name)) {
      fs::create_directories(sdir, ec);
      if (ec) return fail(Errc::kIo, "cannot create ", sdir, ": ", ec.message());
    } else if (!fs::is_directory(sdir, ec)) {
      continue;
    }
    // The marker first, durably: from here on no copy at or below `epoch`
    // is read, whatever the removal below leaves (a crash, a write in flight).
    if (!marked) {
      const std::string marker = sdir + "/deleted-e" + std::to_string(epoch), tmp = marker + ".tmp";
      const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) return fail(Errc::kIo, "open ", tmp, ": ", std::strerror(errno));
      const bool synced = ::fsync(fd) == 0;
      ::close(fd);
      if (!synced || ::rename(tmp.c_str(), marker.c_str()) != 0) {
        ::unlink(tmp.c_str());
        return fail(Errc::kIo, "global storage: cannot write ", marker, ": ", std::strerror(errno));
      }
      fsync_dir(sdir);
    }
    for (const auto& e : fs::directory_iterator(sdir, ec)) {
      const std::string file = e.path().filename().string();
      GlobalCopy c;
      unsigned node;
      uint64_t marked_at;
      const bool old_copy = parse_name(file, &c.epoch, &c.generation, &node) && c.epoch <= epoch;
      const bool old_marker = parse_marker(file, &marked_at) && marked_at < epoch;
      if (!old_copy && !old_marker) continue;
      std::error_code rm;
      if (!fs::remove(e.path(), rm) && rm)
        return fail(Errc::kIo, "global storage: cannot remove ", e.path().string(), ": ", rm.message());
    }
    if (ec) return fail(Errc::kIo, "global storage: cannot list ", sdir, ": ", ec.message());
  }
  return {};
}

Result<void> GlobalStore::read(const GlobalCopy& c, std::span<std::byte> dest) {
  if (dest.size() != c.size) return fail(Errc::kInvalidArgument, "destination is not the copy's size");
  const int fd = ::open(c.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(Errc::kIo, "open ", c.path, ": ", std::strerror(errno));
  Header h{};
  bool ok = ::pread(fd, &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h);
  size_t got = 0;
  while (ok && got < dest.size()) {
    const ssize_t r = ::pread(fd, dest.data() + got, dest.size() - got, static_cast<off_t>(sizeof h + got));
    if (r <= 0) ok = false;
    else got += static_cast<size_t>(r);
  }
  ::close(fd);
  if (!ok) return fail(Errc::kIo, "short read of ", c.path);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.version != 1 || h.size != c.size ||
      h.epoch != c.epoch || h.generation != c.generation)
    return fail(Errc::kCorrupt, c.path, ": bad header");
  // A copy is of the segment it was written for, wherever the file lies.
  if (!c.name.empty() &&
      (h.name_len != c.name.size() || h.name_len > sizeof h.name || std::memcmp(h.name, c.name.data(), h.name_len) != 0))
    return fail(Errc::kCorrupt, c.path, ": a copy of another segment (",
                std::string(h.name, std::min<size_t>(h.name_len, sizeof h.name)), ")");
  if (crc32c(dest.data(), dest.size()) != h.crc) return fail(Errc::kCorrupt, c.path, ": checksum mismatch");
  return {};
}

}  // namespace baton
