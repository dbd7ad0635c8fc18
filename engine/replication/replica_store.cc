#include "replication/replica_store.h"

#include <algorithm>
#include <cstring>

namespace baton {

namespace {
/// Copies chunk `c` of a segment of `size` bytes in `cs`-byte chunks from
/// one copy of it to another; returns the chunk's length.
uint32_t copy_chunk(std::byte* to, const std::byte* from, uint64_t size, uint32_t cs, uint32_t c) noexcept {
  const uint64_t off = uint64_t{c} * cs;
  const uint32_t len = wire::chunk_len(size, cs, c);
  std::memcpy(to + off, from + off, len);
  return len;
}
}  // namespace

std::unique_ptr<ReplicaStore> ReplicaStore::shaped(const Origin& origin, uint32_t retain) {
  auto store = std::make_unique<ReplicaStore>();
  store->name_ = origin.name;
  store->pages_ = origin.pages;
  store->id_ = origin.id;
  store->size_ = origin.size;
  store->epoch_ = origin.epoch;
  store->owner_ = origin.owner;
  store->retain_ = retain;
  store->slots_.resize(2 + retain);
  store->writer_pins_ = std::make_unique<std::atomic<uint32_t>[]>(2 + retain);
  // Deltas of up to this many chunks are tracked without allocating on
  // the worker (more grow these once).
  for (auto& slot : store->slots_) slot.delta_chunks.reserve(kDeltaReserve);
  store->shadow_delta_.reserve(kDeltaReserve);
  store->hops_.reserve(kDeltaReserve * (2 + retain));
  return store;
}

Result<std::unique_ptr<ReplicaStore>> ReplicaStore::create(const Origin& first, uint32_t retain, int numa_node) {
  auto store = shaped(first, retain);
  for (auto& slot : store->slots_) {
    auto mem = LocalStorage::create(store->name_ + "@replica", first.size, numa_node, first.pages);
    if (!mem) return tl::unexpected(mem.error());
    slot.mem = std::move(*mem);
  }
  if (first.hot) {
    auto mem = LocalStorage::create(store->name_, first.size, numa_node, first.pages);
    if (!mem) return tl::unexpected(mem.error());
    store->hot_ = std::make_unique<Hot>();
    store->hot_->mem = std::move(*mem);
  }
  return store;
}

std::unique_ptr<ReplicaStore> ReplicaStore::from_owner(const Origin& origin, Kept k) {
  auto store = shaped(origin, 0);
  Slot& held = store->slots_[0];
  held.mem = std::move(k.latest);
  held.generation = k.generation;
  held.epoch = k.epoch;
  held.set = k.set;
  held.gen_crc = k.gen_crc;
  held.chunk_size = k.chunk_size;
  held.chunk_crcs = std::move(k.chunk_crcs);
  held.content = k.generation;
  held.content_epoch = k.epoch;
  store->slots_[1].mem = std::move(k.spare);  // content unknown: no delta is built on it
  store->published_.push_back(0);
  store->last_published_ = k.generation;
  return store;
}

int ReplicaStore::pick_shadow() noexcept {
  // An empty slot first, else the oldest published one that is neither the
  // latest nor pinned by a reader.
  // (A slot whose memory a promotion took has none.)
  for (size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].generation == 0 && slots_[i].mem.data() != nullptr) return static_cast<int>(i);
  for (size_t k = published_.size(); k-- > 1;) {
    int i = published_[k];
    if (!in_use(i)) {
      published_.erase(published_.begin() + static_cast<long>(k));
      slots_[i].generation = 0;
      return i;
    }
  }
  return -1;
}

ReplicaStore::Accept ReplicaStore::begin_delta(wire::Frame& f) noexcept {
  // The base must be what this store published last, under this epoch, in
  // the same shape.
  Slot* base = latest();
  const uint32_t chunks = wire::chunk_count_for(size_, f.chunk_size);
  ahead_ = -1;  // what the copy ahead did not reach, the hops below take
  if (base == nullptr || base->generation != f.delta_base || base->epoch != epoch_ ||
      base->chunk_size != f.chunk_size || f.total_len != size_ || base->chunk_crcs.size() != chunks)
    return Accept::kNeedFull;
  if (shadow_ < 0) shadow_ = pick_shadow();
  if (shadow_ < 0) return Accept::kNoSlot;
  Slot& sh = slots_[shadow_];
  prepare_from_ = static_cast<int>(base - slots_.data());
  // The shadow becomes a copy of the base. When it holds a generation the
  // base is a chain of deltas away from (the slots between all published),
  // only the chunks those deltas carried are copied; else all of it, a
  // slice per arriving frame (accept()).
  std::vector<uint32_t>& hops = hops_;  // kept: no allocation per generation
  hops.clear();
  const bool chained = chains_to(sh, *base, hops);
  sh.content = 0;  // rewritten from here on
  if (f.chunk_count == chunks) {
    prepared_ = size_;  // the delta carries every chunk: nothing of the base survives
  } else if (chained) {
    for (uint32_t c : hops) copy_chunk(sh.mem.data(), base->mem.data(), size_, f.chunk_size, c);
    prepared_ = size_;
  } else {
    prepared_ = 0;
    received_.reset(chunks);
  }
  assembler_.begin(sh.mem.data(), f, base->chunk_crcs);
  shadow_set_ = f.sack;
  shadow_delta_.clear();
  return Accept::kStored;
}

bool ReplicaStore::chains_to(const Slot& from, const Slot& to, std::vector<uint32_t>& hops) noexcept {
  if (from.content == 0 || from.content_epoch != to.epoch) return false;
  for (const Slot* at = &to; at->generation != from.content;) {
    const Slot* prev = at->delta_of != 0 ? find(at->delta_of) : nullptr;
    if (at->delta_of == from.content) prev = at;  // the last hop: `from` itself is its base
    if (prev == nullptr || at->epoch != to.epoch || at->chunk_size != to.chunk_size) return false;
    hops.insert(hops.end(), at->delta_chunks.begin(), at->delta_chunks.end());
    if (prev == at) break;
    at = prev;
  }
  return true;
}

bool ReplicaStore::same_as_latest(wire::Frame& f) noexcept {
  const Slot* held = latest();
  if (held == nullptr || held->generation != f.generation || held->epoch >= epoch_ || held->gen_crc != f.gen_crc ||
      held->chunk_size != f.chunk_size || f.total_len != size_ ||
      held->chunk_crcs.size() != wire::chunk_count_for(size_, f.chunk_size))
    return false;
  // Number and generation checksum agree; so must this chunk's bytes (the
  // frame's own checksum first: it may be corrupt).
  const uint32_t c = f.chunk();
  return wire::verify_payload(f) && c < held->chunk_crcs.size() && f.payload_crc == held->chunk_crcs[c];
}

ReplicaStore::Accept ReplicaStore::accept(wire::Frame& f, uint64_t& budget) noexcept {
  if (f.generation <= last_published_) return Accept::kStale;
  const bool delta = (f.flags & wire::kFlagDelta) != 0;
  if (!delta && (f.flags & wire::kFlagGenCrc) != 0 && same_as_latest(f)) {
    // Relabel what is held; a copy of it begun meanwhile is dropped. It
    // chains to nothing older: those slots are of the old epoch.
    Slot& s = *latest();
    assembler_.stop();
    ahead_ = -1;
    // A hot copy of it (S16) is of it still, under the new epoch too.
    if (hot_ != nullptr && hot_->follows == s.generation && hot_->follows_epoch == s.epoch)
      hot_->follows_epoch = epoch_;
    // So is a free slot the copy ahead had brought up to it: the next
    // delta's shadow (or a takeover's first stage) then copies nothing,
    // where it would copy the whole base.
    for (Slot& o : slots_)
      if (&o != &s && o.generation == 0 && o.content == s.generation && o.content_epoch == s.epoch)
        o.content_epoch = epoch_;
    s.epoch = epoch_;
    s.set = f.sack;
    s.content_epoch = epoch_;
    s.delta_of = 0;
    s.delta_chunks.clear();
    last_published_ = s.generation;
    return Accept::kRestamped;
  }
  if (!assembler_.matches(f)) {
    // A newer generation supersedes a half-built one (the sender moved on).
    if (assembler_.active() && f.generation < assembler_.generation()) return Accept::kStale;
    // Only a verified frame may abandon the generation in progress.
    if (!wire::verify_payload(f)) return Accept::kBadFrame;
    if (delta) {
      if (const Accept a = begin_delta(f); a != Accept::kStored) return a;
    } else {
      ahead_ = -1;
      if (shadow_ < 0) shadow_ = pick_shadow();
      if (shadow_ < 0) return Accept::kNoSlot;
      slots_[shadow_].content = 0;
      assembler_.begin(slots_[shadow_].mem.data(), f);
      shadow_set_ = f.sack;
      shadow_delta_.clear();
      prepared_ = size_;
    }
  }
  // A delta's shadow still becoming a copy of its base: a slice per frame
  // while the poll's budget lasts, and the frame is kept (its chunk is not
  // copied over later).
  if (prepared_ < size_ && budget > 0) budget -= std::min(budget, prepare(budget));
  switch (assembler_.accept(f)) {
    case ChunkAssembler::Outcome::kStored:
      if (delta) {
        shadow_delta_.push_back(f.chunk());
        if (prepared_ < size_) received_.set(f.chunk());
      }
      return Accept::kStored;
    case ChunkAssembler::Outcome::kDuplicate: return Accept::kDuplicate;
    case ChunkAssembler::Outcome::kCorrupt:
      // A delta that does not check out against its base: ask for it whole.
      if (assembler_.is_delta()) {
        assembler_.stop();
        return Accept::kNeedFull;
      }
      return Accept::kCorrupt;
    case ChunkAssembler::Outcome::kBadFrame: return Accept::kBadFrame;
    case ChunkAssembler::Outcome::kComplete:
      if (delta) {
        shadow_delta_.push_back(f.chunk());
        if (prepared_ < size_) {
          // Fewer frames than slices: the rest of the base a slice per
          // poll (advance_within), then publish.
          received_.set(f.chunk());
          completing_ = assembler_.generation();
          return Accept::kCompleting;
        }
      }
      break;
  }
  publish();
  return Accept::kPublished;
}

bool ReplicaStore::finish_delta(uint64_t& budget) noexcept {
  if (preparing()) budget -= std::min(budget, prepare(std::max<uint64_t>(budget, 1)));
  if (!completing()) {
    completing_ = 0;
    return false;
  }
  if (prepared_ < size_) return false;
  completing_ = 0;
  publish();
  return true;
}

uint64_t ReplicaStore::prepare(uint64_t budget) noexcept {
  // Whole chunks from the base, but those the delta already brought.
  const uint32_t cs = assembler_.chunk_size();
  std::byte* const to = slots_[shadow_].mem.data();
  const std::byte* const from = slots_[prepare_from_].mem.data();
  uint64_t done = 0;
  while (prepared_ < size_ && done < budget) {
    const auto c = static_cast<uint32_t>(prepared_ / cs);
    const uint32_t len = wire::chunk_len(size_, cs, c);
    if (!received_.test(c)) std::memcpy(to + prepared_, from + prepared_, len);
    prepared_ += len;
    done += len;
  }
  return done;
}

void ReplicaStore::publish() noexcept {
  Slot& s = slots_[shadow_];
  s.generation = assembler_.generation();
  s.epoch = epoch_;
  s.set = shadow_set_;
  s.gen_crc = assembler_.gen_crc();
  s.chunk_size = assembler_.chunk_size();
  s.chunk_crcs.assign(assembler_.chunk_crcs().begin(), assembler_.chunk_crcs().end());
  s.content = s.generation;
  s.content_epoch = epoch_;
  s.delta_of = assembler_.base();
  s.delta_chunks.assign(shadow_delta_.begin(), shadow_delta_.end());  // grows once, then reuses its room
  // Publish: the slot becomes the latest in one step; the oldest beyond the
  // retention window stops being visible (its memory is reused later).
  published_.insert(published_.begin(), shadow_);
  if (published_.size() > retain_ + 1) {
    int dropped = published_.back();
    if (!in_use(dropped)) {
      published_.pop_back();
      slots_[dropped].generation = 0;
    }
  }
  last_published_ = s.generation;
  shadow_ = -1;
  assembler_.stop();
  hot_published(s);
  plan_ahead();
}

void ReplicaStore::plan_ahead() noexcept {
  // Only a slot nobody can read (not published, no pin) that the latest
  // generation is one delta away from; with retain > 0 the slot the next
  // delta takes is still published (a reader may want it) until then.
  ahead_ = -1;
  const Slot* l = latest();
  if (l == nullptr || l->delta_of == 0 || l->delta_chunks.empty()) return;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (&s == l || s.generation != 0 || s.mem.data() == nullptr || in_use(static_cast<int>(i))) continue;
    if (s.content != l->delta_of || s.content_epoch != l->epoch || s.chunk_size != l->chunk_size) continue;
    ahead_ = static_cast<int>(i);
    ahead_from_ = published_.front();
    ahead_generation_ = l->generation;
    ahead_next_ = 0;
    return;
  }
}

bool ReplicaStore::advance_shadow(uint64_t& budget) noexcept {
  if (ahead_ < 0) return true;
  Slot& to = slots_[ahead_];
  const Slot* from = latest();
  // Whatever happened since (a shadow taken, a publish, a promotion) ends
  // it: the slot still says what it held before, and that stays true
  // enough for a chain (above).
  if (from == nullptr || from != &slots_[ahead_from_] || from->generation != ahead_generation_ ||
      to.generation != 0 || to.mem.data() == nullptr || in_use(ahead_) || ahead_ == shadow_) {
    ahead_ = -1;
    return true;
  }
  uint64_t copied = 0;
  while (ahead_next_ < from->delta_chunks.size() && copied < std::max<uint64_t>(budget, 1))
    copied += copy_chunk(to.mem.data(), from->mem.data(), size_, from->chunk_size, from->delta_chunks[ahead_next_++]);
  budget -= std::min(budget, copied);
  if (ahead_next_ < from->delta_chunks.size()) return false;
  to.content = from->generation;  // content_epoch and chunk_size agree (plan_ahead)
  ahead_ = -1;
  return true;
}

// --- hot standby ---------------------------------------------------------------

void ReplicaStore::hot_published(const Slot& s) noexcept {
  if (hot_ == nullptr) return;
  Hot& h = *hot_;
  const uint32_t chunks = wire::chunk_count_for(size_, s.chunk_size);
  // A delta of the generation the copy follows changes only its chunks;
  // anything else may change every chunk.
  if (s.delta_of != 0 && s.delta_of == h.follows && s.epoch == h.follows_epoch && s.chunk_size == h.chunk_size &&
      h.stale.count() == chunks) {
    for (uint32_t c : s.delta_chunks) h.stale_count += h.stale.set(c);
  } else {
    h.stale.reset(chunks);
    h.stale.set_all();
    h.stale_count = chunks;
    h.chunk_size = s.chunk_size;
    h.next = 0;
  }
  h.follows = s.generation;
  h.follows_epoch = s.epoch;
  if (h.stale_count == 0) h.equals = s.generation;
}

bool ReplicaStore::hot_within(uint64_t& budget) noexcept {
  if (hot_ == nullptr) return true;  // nothing to do (none, or handed over)
  Hot& h = *hot_;
  if (h.stale_count == 0) return true;
  // The copy follows the latest slot (every publish says so); should the
  // two ever disagree, stop until the next publish rather than copy.
  const Slot* from = latest();
  if (from == nullptr || from->generation != h.follows) return true;
  uint64_t copied = 0;
  for (uint32_t c = h.stale.next_set(h.next); h.stale_count != 0 && copied < std::max<uint64_t>(budget, 1);) {
    if (c >= h.stale.count()) c = h.stale.next_set(0);  // wrapped: what was marked behind the cursor
    copied += copy_chunk(h.mem.data(), from->mem.data(), size_, h.chunk_size, c);
    h.stale.clear(c);
    --h.stale_count;
    h.next = c + 1;
    c = h.stale.next_set(h.next);
  }
  budget -= std::min(budget, copied);
  if (h.stale_count != 0) return false;
  h.equals = h.follows;
  h.next = 0;
  return true;
}

std::optional<ReplicaStore::Promotion> ReplicaStore::promote(uint64_t generation, uint64_t epoch,
                                                            Hand hand) noexcept {
  // All or nothing: the latest slot and another one must be free of
  // readers, so that the new owner needs no memory it could fail to get
  // after this store gave its copy away (with one replica it may be the
  // only copy of the newest generation). Else the caller copies instead.
  if (published_.empty() || in_use(published_.front())) return std::nullopt;
  const int latest_slot = published_.front();
  Slot& l = slots_[latest_slot];
  if (l.generation != generation || l.epoch != epoch) return std::nullopt;
  // A slot but `a` and `b` that still has its memory and no reader (-1: none).
  const auto free_slot_but = [this](int a, int b) {
    for (size_t i = 0; i < slots_.size(); ++i)
      if (const int s = static_cast<int>(i); s != a && s != b && !in_use(s) && slots_[i].mem.data() != nullptr) return s;
    return -1;
  };
  int spare_slot = free_slot_but(latest_slot, latest_slot);
  if (spare_slot < 0) return std::nullopt;
  // The first stage in place: the free slot fewest chunks away from the
  // generation (the worker keeps one brought up to the latest between
  // generations, advance_shadow), so the load copies what it lacks only.
  // (Once per takeover: the vectors are not worth keeping.) A chain whose
  // deltas between them carried every chunk is no better than a whole copy.
  bool chained = false;
  std::vector<uint32_t> behind;
  if (hand == Hand::kInPlace) {
    const size_t chunks = l.chunk_crcs.size();
    std::vector<uint32_t> hops;
    for (size_t i = 0; i < slots_.size(); ++i) {
      const int s = static_cast<int>(i);
      hops.clear();
      if (s == latest_slot || in_use(s) || slots_[i].mem.data() == nullptr || !chains_to(slots_[i], l, hops)) continue;
      std::sort(hops.begin(), hops.end());
      hops.erase(std::unique(hops.begin(), hops.end()), hops.end());
      if (hops.size() >= chunks) continue;
      if (!chained || hops.size() < behind.size()) {
        chained = true;
        spare_slot = s;
        behind.swap(hops);
      }
    }
  }
  const auto app_may_use = [this](const LocalStorage& m) {
    return pages_ == LocalStorage::Pages::kAny || !m.huge_pages();
  };
  if (hand == Hand::kInPlace && (!app_may_use(l.mem) || !app_may_use(slots_[spare_slot].mem))) return std::nullopt;
  Promotion p;
  if (hand == Hand::kHotCopy) {
    auto app = take_hot(generation, epoch);
    if (!app) return std::nullopt;
    p.app = std::move(*app);
  }
  p.chunk_crcs = std::move(l.chunk_crcs);
  p.gen_crc = l.gen_crc;
  p.chunk_size = l.chunk_size;
  if (hand == Hand::kInPlace) {
    p.app = std::move(l.mem);
    p.stage = std::move(slots_[spare_slot].mem);
    p.stage_chained = chained;
    p.stage_behind = std::move(behind);
    // A third slot (retain >= 1) is the second stage: no allocation on the
    // load's path (3.5-6.5 ms for 64 MiB of huge pages here).
    if (const int third = free_slot_but(latest_slot, spare_slot); third >= 0) p.spare = std::move(slots_[third].mem);
  } else {
    p.stage = std::move(l.mem);
    p.spare = std::move(slots_[spare_slot].mem);
  }
  // What is left is not a store any more: nothing is published, and a
  // frame that still arrives finds no shadow.
  for (auto& s : slots_)
    if (s.mem.data() == nullptr) s.generation = 0;
  std::erase_if(published_, [this](int i) { return slots_[i].mem.data() == nullptr; });
  assembler_.stop();
  shadow_ = -1;
  ahead_ = -1;
  return p;
}

uint64_t ReplicaStore::Promotion::fill_stage(const LocalStorage& app) noexcept {
  if (!stage_chained) {
    std::memcpy(stage.data(), app.data(), app.size());
    return app.size();
  }
  uint64_t copied = 0;
  for (uint32_t c : stage_behind) copied += copy_chunk(stage.data(), app.data(), app.size(), chunk_size, c);
  return copied;
}

ReplicaStore::HotStatus ReplicaStore::hot_status() const noexcept {
  if (hot_ == nullptr) return {};
  return HotStatus{true, hot_->equals, uint64_t{hot_->stale_count} * hot_->chunk_size};
}

std::optional<LocalStorage> ReplicaStore::take_hot(uint64_t generation, uint64_t epoch) noexcept {
  const Slot* l = latest();
  if (hot_ == nullptr || l == nullptr || l->generation != generation || l->epoch != epoch ||
      hot_->follows != generation || hot_->follows_epoch != epoch)
    return std::nullopt;
  advance_hot(size_);  // the budget covers all of it
  if (hot_->stale_count != 0) return std::nullopt;
  std::optional<LocalStorage> out(std::move(hot_->mem));
  hot_.reset();
  return out;
}

void ReplicaStore::fill_ack(wire::Frame& ack) const noexcept {
  if (assembler_.active()) {
    assembler_.fill_ack(ack);
    return;
  }
  ack.generation = last_published_;
  ack.flags |= wire::kFlagComplete;
}

ReplicaStore::Slot* ReplicaStore::find(uint64_t generation) noexcept {
  if (generation == 0) return latest();
  for (int i : published_)
    if (slots_[i].generation == generation) return &slots_[i];
  return nullptr;
}

std::vector<uint64_t> ReplicaStore::generations() const {
  std::vector<uint64_t> out;
  for (int i : published_) out.push_back(slots_[i].generation);
  return out;
}

}  // namespace baton
