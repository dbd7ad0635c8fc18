#pragma once
// batond's failover manager (S17-S21, issue #12): service groups, the spare
// pool, decisions and their execution, on a thread of its own
// (`baton-failover`).
//
// Every node sends its report (capabilities, pool membership, the groups it
// was assigned and how they do) to every peer a few times a second as a
// daemon note over the backplane (Engine::send_note). The coordinator, the
// lowest node id of a quorate view all members agree on, decides from the
// reports (failover/coordinator.h) and sends its assignments to every
// node, again every second; each node's Runner (failover/runner.h) starts
// what is assigned to it and stops what moved away. Every decision is an
// event with its reasons (batonctl events), and `batonctl groups` shows
// the groups, the pool and the last decisions.
//
// Thread: its own, but for status() (any thread, under mu_).

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "baton/engine.h"
#include "failover/coordinator.h"
#include "failover/runner.h"

namespace baton::failover {

struct ManagerConfig {
  uint16_t node = 0;
  NodeCaps caps;
  std::vector<ServiceGroup> groups;
  std::string socket;    ///< batond's: the runner's loads go through it, until `local` is set
  std::shared_ptr<LocalLoads> local;  ///< or, once set, inside batond (Runner::Env::local)
};

class Manager {
 public:
  /// Starts the thread. Errors: kInvalidArgument (this node's report would
  /// not fit in a note).
  static Result<std::unique_ptr<Manager>> start(Engine& engine, ManagerConfig config);
  /// Stops the thread and every group running here.
  ~Manager();

  /// Groups, pool and the last decisions, for `batonctl groups`.
  nlohmann::json status() const;
  /// A metric an application reported (baton_report); taken on the
  /// manager's thread. Thread: any (a session thread).
  void metric(pid_t pid, const std::string& name, double value);

 private:
  Manager(Engine& engine, ManagerConfig config);
  void run() noexcept;
  void tick(uint64_t now);
  void take_notes(uint64_t now);
  /// This node's report as it stands (capabilities, the groups it runs).
  NodeReport own_report() const;
  void broadcast(const std::string& note);
  void decided(std::string text);
  void alert(const Coordinator::Alert& a);

  Engine& engine_;
  const ManagerConfig config_;
  Runner runner_;
  Coordinator coordinator_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  // The thread's, read by status() under mu_.
  mutable std::mutex mu_;
  std::map<uint16_t, NodeReport> reports_;   ///< the latest from each node, this one's included
  std::map<uint16_t, uint64_t> heard_ns_;    ///< when each report came
  std::map<std::string, Assignment> assignments_;  ///< newest heard or made, by group
  std::deque<std::string> decisions_;        ///< the last 32
  uint16_t coordinator_id_ = 0;              ///< 0: no coordinator (no quorate, agreed view)
  uint64_t last_report_ns_ = 0, last_repeat_ns_ = 0;
  std::string last_note_;                    ///< the report last sent
  int report_echoes_ = 0;                    ///< times a changed report is still to go out again (kEchoes)
  /// New assignments still to go out again, a tick apart (kEchoes).
  struct Echo {
    Assignment assignment;
    int left = 0;
    uint64_t sent_ns = 0;
  };
  std::vector<Echo> assign_echoes_;
  bool coordinating_ = false;                ///< it coordinated at the last tick
  uint64_t last_tick_ns_ = 0;                ///< a long gap since: this thread was stalled
  ReportRound round_;                        ///< the reports asked for when it began or resumed coordinating
  bool round_said_ = true;                   ///< the round's outcome was logged
  /// Alert hooks running (each in a session of its own), and when each
  /// started: one still running after kAlertTimeoutNs is killed, session
  /// and all, and so are all of them when the manager stops. Manager thread.
  struct RunningAlert {
    pid_t pid;
    uint64_t started_ns;
    std::string group;
  };
  std::vector<RunningAlert> alerts_;
  std::map<std::string, std::string> standbys_;  ///< this node's standby instances (Runner::standbys)
  std::vector<uint16_t> spares_;             ///< the spare pool as last given to Engine::prefer_replicas_on; the thread's
  struct Metric {
    pid_t pid;
    std::string name;
    double value;
  };
  std::vector<Metric> metrics_;              ///< reported, not yet taken; mu_
};

}  // namespace baton::failover
