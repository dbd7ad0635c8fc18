// Daemon notes (wire::MsgType::kNote): small opaque messages between the
// daemons of different nodes over the backplane links, for batond's
// failover manager (its states and assignments). Best effort: the manager
// repeats what matters every few hundred milliseconds.
//
// Thread: send_note and add_event any; on_note the poll-token holder;
// take_notes one consumer at a time.

#include <unistd.h>

#include <cstring>

#include "engine_impl.h"
#include "engine_util.h"

namespace baton {

Result<void> Engine::send_note(uint16_t peer, std::span<const std::byte> bytes) {
  if (bytes.empty() || bytes.size() > wire::kMaxNote)
    return fail(Errc::kInvalidArgument, "a note carries 1..", std::to_string(wire::kMaxNote), " bytes, not ",
                std::to_string(bytes.size()));
  Impl& e = *impl_;
  if (peer != 0 && e.peer_by_node.count(peer) == 0)
    return fail(Errc::kInvalidArgument, "node ", std::to_string(peer), " is not a peer of this node");
  return e.call([&e, peer, bytes] {
    for (uint16_t node : e.peer_nodes) {
      if (peer != 0 && node != peer) continue;
      Link* link = e.link_to(node);
      if (link == nullptr) continue;
      wire::Frame f;
      f.type = wire::MsgType::kNote;
      f.src = e.config.node_id;
      f.dst = node;
      f.payload = bytes;
      e.send_control(*link, f);
    }
  });
}

void Engine::Impl::on_note(const wire::Frame& f) noexcept {
  NoteSlot slot;
  slot.from = f.src;
  slot.len = static_cast<uint16_t>(f.payload.size());  // at most kMaxNote: decode checked
  std::memcpy(slot.bytes.data(), f.payload.data(), f.payload.size());
  if (!notes_in.push(slot)) {
    bump(counters.notes_dropped);
    return;
  }
  bump(counters.notes_rx);
  const uint64_t one = 1;
  if (notes_event >= 0) (void)!write(notes_event, &one, sizeof one);  // a few a second: the daemon wakes
}

std::vector<Note> Engine::take_notes() {
  std::vector<Note> out;
  Impl::NoteSlot slot;
  while (impl_->notes_in.pop(slot))
    out.push_back(Note{slot.from, std::vector<std::byte>(slot.bytes.begin(), slot.bytes.begin() + slot.len)});
  return out;
}

void Engine::add_event(std::string text) { impl_->record_event(std::move(text)); }

int Engine::notes_fd() const noexcept { return impl_->notes_event; }

}  // namespace baton
