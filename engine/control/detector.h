#pragma once
// The failure detector and the membership views it feeds (S17): heartbeats
// on every link, a peer dead only when every link to it is silent or down,
// restarted peers, and views with quorum and agreement.
//
// A Detector decides; it does no I/O and reads no clock. Its inputs are what
// the data path saw (when each link last heard its peer, whether the device
// is up, the heartbeats whose content changed) and the time, passed in; its
// outputs are messages for the data path (a heartbeat to send, a peer's new
// state, a new view) and events. So it runs the same on the engine's control
// thread and under the simulator, which steps it apart from the data path in
// an order of its choosing.
//
// Thread: control (the engine's control thread; under simulation the one
// thread that drives everything).

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "baton/engine.h"
#include "control/membership.h"

namespace baton {

/// The data path's report of a heartbeat whose content changed: a new
/// incarnation of its sender, or another view. Thread: produced by the
/// poll-token holder, consumed by the control thread.
struct HeartbeatSeen {
  uint16_t link = 0;       ///< index into the engine's links
  bool restarted = false;  ///< a new incarnation after an earlier one: the data path dropped its acks already
  uint64_t view_digest = 0;  ///< of the sender's view (View::digest)
  // The sender's placement tags (fixed for an incarnation), for placement.
  uint32_t blade = 0;
  uint32_t power_domain = 0;
  int32_t package = -1;
  int32_t numa_node = -1;
};

/// What the control thread tells the data path. Thread: produced by the
/// control thread, consumed by the poll-token holder.
struct ControlMsg {
  enum class Kind : uint8_t {
    kHeartbeat,  ///< send one on `link`, reporting the view in `view_digest`, `view_id`, `quorate`
    kPeer,       ///< `node` is now `alive` (`ever_heard`); frames to it go over `link`
    kView,       ///< a new view: `view`, the receiver's to delete
    kSend,       ///< a round's question to `node` (control/rounds.cc): `frame`, `flags`, `seg_id`, `epoch`,
                 ///< `name`; a set record's also `generation` (its version) and `set`
    kPlace,      ///< put replica set `set` in the slots of owned segment `seg_id`, if they hold `expect`
                 ///< (control/placement.cc); `flags`: a Placement::Reason
    kRecorded,   ///< set record `generation` of owned segment `seg_id` at `epoch`: reached a quorum
                 ///< (`alive`), or refused by too many nodes for one (!`alive`)
  };
  Kind kind = Kind::kHeartbeat;
  uint16_t link = 0;
  uint16_t node = 0;
  bool alive = false;
  bool ever_heard = false;
  bool quorate = false;
  uint64_t seq = 0;
  uint64_t view_digest = 0;
  uint64_t view_id = 0;
  View* view = nullptr;
  // kSend: the frame's fields (plain data: the ring copies it).
  uint8_t frame = 0;  ///< wire::MsgType
  uint16_t flags = 0;
  uint64_t seg_id = 0;
  uint64_t epoch = 0;
  uint64_t generation = 0;
  uint64_t set = 0;     ///< wire::pack_set
  uint64_t expect = 0;  ///< kPlace: the slots it was decided on (wire::pack_set)
  uint8_t name_len = 0;
  char name[64] = {};  ///< wire::kMaxNameLen = 63
};

/// What the data path saw of one link, as of its last poll.
struct LinkObservation {
  uint64_t heard_ns = 0;  ///< last valid frame from the peer (0: never)
  bool up = false;        ///< the device's own state
};

struct DetectorConfig {
  uint16_t self = 0;
  uint64_t heartbeat_ns = 0;
  uint64_t failure_ns = 0;  ///< silent this long (while the data path polled): dead
  uint32_t expected_votes = 0;
};

class Detector {
 public:
  struct LinkInfo {
    uint16_t peer = 0;
    std::string name;
  };
  using EventSink = std::function<void(std::string)>;

  /// `membership`: where views come from (null: the backplane heartbeats).
  Detector(const DetectorConfig& config, std::vector<LinkInfo> links, EventSink event,
           std::unique_ptr<MembershipSource> membership = nullptr);

  /// A heartbeat whose content changed (see HeartbeatSeen). Appends a new
  /// view to `out` if agreement changed.
  void on_heartbeat(const HeartbeatSeen& hb, std::vector<ControlMsg>& out);
  /// One pass at `now`: heartbeats that are due, links and peers heard or
  /// silent. `polled_ns`: when the data path last received from every link;
  /// silence counts only up to then, so a data path that stalled (not
  /// scheduled, a long copy) makes no peer look dead. Appends to `out`.
  void step(uint64_t now, uint64_t polled_ns, std::span<const LinkObservation> links, std::vector<ControlMsg>& out);
  /// Reads an outside membership service (Corosync), if the source has
  /// one: I/O, so the control thread calls it apart from step() and the
  /// simulator never does. Appends a new view to `out` if it changed.
  void poll_membership(uint64_t now, std::vector<ControlMsg>& out);
  /// When the next heartbeat is due.
  uint64_t next_due_ns() const noexcept;
  /// Whether a question to `node` can be answered: it is alive, or it was
  /// never heard and a link to it is up (it may be starting).
  bool reachable(uint16_t node) const noexcept;
  /// Whether `node` is alive: heard lately over some link.
  bool alive(uint16_t node) const noexcept;
  const View& view() const noexcept { return membership_->view(); }

 private:
  struct LinkLive {
    LinkInfo info;
    size_t peer = 0;  ///< index into peers_
    uint64_t last_heard_ns = 0;
    uint64_t last_sent_ns = 0;
    uint64_t seq = 0;
    bool alive = false;
    bool up = false;  ///< the device, as last observed
  };
  struct PeerLive {
    uint16_t node = 0;
    std::vector<size_t> links;
    size_t via = 0;  ///< the link frames to it go over: an alive one, else its first
    uint64_t last_heard_ns = 0;
    uint64_t digest = 0;  ///< its last reported view (0: none yet)
    bool alive = false;
    bool ever_heard = false;
    // What the data path was last told.
    bool told = false, told_alive = false;
    size_t told_via = 0;
  };
  void update_view(std::vector<ControlMsg>& out);
  /// The membership's view changed: reports fed again, the view sent, an event.
  void view_changed(std::vector<ControlMsg>& out);
  void emit_view(std::vector<ControlMsg>& out);

  DetectorConfig config_;
  std::vector<LinkLive> links_;
  std::vector<PeerLive> peers_;
  std::unique_ptr<MembershipSource> membership_;
  EventSink event_;
  bool dirty_ = false;  ///< liveness changed since the membership was last told
};

}  // namespace baton
