#pragma once
// This test process as node 1 with one memif link to node 2 (a baton-peer
// process the test spawns with peer_command()).

#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "baton/engine.h"
#include "baton/ethdev.h"
#include "process.h"

namespace baton::test {

struct MemifNode {
  std::string socket;
  std::string device;  ///< this side's vdev name, e.g. net_memif0
  std::string role;    ///< this side's role
  std::string client_args;  ///< more devargs for the client end, whichever it is (",zero-copy=yes")
  std::unique_ptr<Engine> engine;

  /// The baton-peer command line for the other end of the link.
  std::vector<std::string> peer_command() const {
    return {helper("BATON_PEER"), "--node", "2", "--peer", "1", "--device",
            "net_memif0,role=" + std::string(role == "server" ? "client" : "server") + ",socket=" + socket +
                (role == "server" ? client_args : std::string())};
  }
};

/// Opens `device` (a fresh vdev name per call) with `role` on a new socket and
/// starts node 1 over it. `config.node_id` is set to 1. `client_args` go to
/// the client end's devargs, this one's or the peer's.
inline Result<MemifNode> start_memif_node(const std::string& device, const std::string& role, EngineConfig config = {},
                                          const std::string& client_args = {}) {
  MemifNode n;
  n.socket = "/tmp/baton-test-" + std::to_string(getpid()) + "-" + device + ".sock";
  n.device = device;
  n.role = role;
  n.client_args = client_args;
  unlink(n.socket.c_str());
  ethdev::PortConfig pc;
  pc.device = device + ",role=" + role + ",socket=" + n.socket + (role == "client" ? client_args : std::string());
  pc.peer = 2;
  auto link = ethdev::open_port(pc);
  if (!link) return tl::unexpected(link.error());
  std::vector<std::unique_ptr<Link>> links;
  links.push_back(std::move(*link));
  config.node_id = 1;
  auto engine = Engine::start(config, std::move(links));
  if (!engine) return tl::unexpected(engine.error());
  n.engine = std::move(*engine);
  return n;
}

}  // namespace baton::test
