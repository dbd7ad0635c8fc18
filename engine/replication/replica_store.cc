#include "replication/replica_store.h"

namespace baton {

Result<std::unique_ptr<ReplicaStore>> ReplicaStore::create(const Origin& first, uint32_t retain, int numa_node) {
  auto store = std::make_unique<ReplicaStore>();
  store->name_ = first.name;
  store->id_ = first.id;
  store->size_ = first.size;
  store->epoch_ = first.epoch;
  store->owner_ = first.owner;
  store->retain_ = retain;
  store->slots_.resize(2 + retain);
  store->writer_pins_ = std::make_unique<std::atomic<uint32_t>[]>(2 + retain);
  for (auto& slot : store->slots_) {
    auto mem = LocalStorage::create(store->name_ + "@replica", first.size, numa_node);
    if (!mem) return tl::unexpected(mem.error());
    slot.mem = std::move(*mem);
  }
  return store;
}

int ReplicaStore::pick_shadow() noexcept {
  // An empty slot first, else the oldest published one that is neither the
  // latest nor pinned by a reader.
  for (size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].generation == 0) return static_cast<int>(i);
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

ReplicaStore::Accept ReplicaStore::accept(wire::Frame& f) noexcept {
  if (f.generation <= last_published_) return Accept::kStale;
  if (!assembler_.matches(f)) {
    // A newer generation supersedes a half-built one (the sender moved on).
    if (assembler_.active() && f.generation < assembler_.generation()) return Accept::kStale;
    // Only a verified frame may abandon the generation in progress.
    if (!wire::verify_payload(f)) return Accept::kBadFrame;
    if (shadow_ < 0) shadow_ = pick_shadow();
    if (shadow_ < 0) return Accept::kNoSlot;
    assembler_.begin(slots_[shadow_].mem.data(), f);
    shadow_set_ = f.sack;
  }
  switch (assembler_.accept(f)) {
    case ChunkAssembler::Outcome::kStored: return Accept::kStored;
    case ChunkAssembler::Outcome::kDuplicate: return Accept::kDuplicate;
    case ChunkAssembler::Outcome::kCorrupt: return Accept::kCorrupt;
    case ChunkAssembler::Outcome::kBadFrame: return Accept::kBadFrame;
    case ChunkAssembler::Outcome::kComplete: break;
  }
  Slot& s = slots_[shadow_];
  s.generation = assembler_.generation();
  s.epoch = epoch_;
  s.set = shadow_set_;
  s.gen_crc = assembler_.gen_crc();
  s.chunk_size = assembler_.chunk_size();
  s.chunk_crcs.assign(assembler_.chunk_crcs().begin(), assembler_.chunk_crcs().end());
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
  return Accept::kPublished;
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
