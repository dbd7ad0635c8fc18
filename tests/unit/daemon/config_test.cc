// batond's config: a good file parses; every kind of mistake is refused with
// a message that names the field.

#include <gtest/gtest.h>
#include <unistd.h>
#include <sys/stat.h>
#include <filesystem>
#include <fstream>

#include "daemon/config.h"
#include "runtime/topology.h"

namespace baton {
namespace {

constexpr const char* kGood = R"(
[node]
id = 3
name = "blade3"
cores = 2
memory_mib = 4096
tags = ["slot=3", "power=B"]

[engine]
replication_factor = 2
retain = 1
idle = "spin"
max_segment_mib = 256
worker_cpu = 1
numa_node = 0
topology = "synthetic:package:2 numa:2 core:4 pu:1"
heartbeat_us = 500
failure_timeout_us = 5000
expected_votes = 5
direct_reads = false
chunk_kib = 4

[client]
socket = "/run/baton/blade3.sock"
user = "root"
mode = "0600"

[log]
level = "debug"

[storage]
dir = "/srv/baton"
keep = 3
stop_wait_ms = 2500
buffer_mib = 64

[eal]
args = ["--log-level=4"]

[membership]
source = "corosync"
group = "rack7"

[[link]]
peer = 1
device = "net_memif0,role=client,socket=/run/baton/1-3.sock"

[[link]]
peer = 2
driver = "ethdev"
device = "net_memif1,role=client,socket=/run/baton/2-3.sock"
)";

TEST(DaemonConfig, GoodFileParses) {
  auto c = parse_daemon_config(kGood, "good.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->engine.node_id, 3);
  EXPECT_EQ(c->name, "blade3");
  EXPECT_EQ(c->cores, 2u);
  EXPECT_EQ(c->tags, (std::vector<std::string>{"slot=3", "power=B"}));
  EXPECT_EQ(c->engine.replication_factor, 2u);
  EXPECT_EQ(c->engine.retain, 1u);
  EXPECT_EQ(c->engine.idle, IdlePolicy::kSpin);
  EXPECT_EQ(c->engine.max_segment_size, 256ull << 20);
  EXPECT_EQ(c->engine.worker_cpu, 1);
  EXPECT_EQ(c->engine.numa_node, 0);
  EXPECT_EQ(c->engine.topology, "synthetic:package:2 numa:2 core:4 pu:1");
  EXPECT_EQ(c->engine.heartbeat_interval_us, 500u);
  EXPECT_EQ(c->engine.failure_timeout_us, 5000u);
  EXPECT_EQ(c->engine.expected_votes, 5u);
  EXPECT_FALSE(c->engine.direct_reads);
  EXPECT_EQ(c->engine.chunk_size, 4096u);
  EXPECT_EQ(c->engine.membership, MembershipKind::kCorosync);
  EXPECT_EQ(c->engine.corosync_group, "rack7");
  // Placement tags become failure domains: another slot, another blade;
  // another power name, another domain.
  EXPECT_NE(c->engine.blade, 0u);
  EXPECT_NE(c->engine.power_domain, 0u);
  auto other = parse_daemon_config(R"([node]
id = 4
tags = ["slot=4", "power=B", "rack=7"]
[client]
socket = "/tmp/b.sock"
)", "other.toml");
  ASSERT_TRUE(other) << other.error().message;
  EXPECT_NE(other->engine.blade, c->engine.blade);
  EXPECT_EQ(other->engine.power_domain, c->engine.power_domain);
  EXPECT_EQ(c->engine.global_dir, "/srv/baton");
  EXPECT_EQ(c->engine.global_keep, 3u);
  EXPECT_EQ(c->engine.global_stop_wait_ms, 2500u);
  EXPECT_EQ(c->engine.global_buffer_mib, 64u);
  EXPECT_EQ(c->socket_path, "/run/baton/blade3.sock");
  EXPECT_EQ(c->allow_uid, 0u);
  EXPECT_EQ(c->socket_mode, 0600u);
  EXPECT_EQ(c->log_level, LogLevel::kDebug);
  ASSERT_EQ(c->links.size(), 2u);
  EXPECT_EQ(c->links[1].peer, 2);
  EXPECT_EQ(c->links[0].driver, "ethdev");
}

TEST(DaemonConfig, TwoLinksMayReachOnePeer) {
  auto c = parse_daemon_config(R"([node]
id = 1
[client]
socket = "/tmp/b.sock"
[[link]]
peer = 2
device = "net_memif0,role=server,socket=/tmp/a.sock"
[[link]]
peer = 2
device = "net_af_packet0,iface=veth0"
)", "two.toml");
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_EQ(c->links.size(), 2u);
  EXPECT_EQ(c->links[0].peer, c->links[1].peer);
}

TEST(DaemonConfig, AShmLinkNamesItsRegion) {
  auto c = parse_daemon_config(R"([node]
id = 1
[client]
socket = "/tmp/b.sock"
[[link]]
peer = 3
driver = "shm"
device = "/dev/shm/baton-1-3"
)", "shm.toml");
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_EQ(c->links.size(), 1u);
  EXPECT_EQ(c->links[0].driver, "shm");
  EXPECT_EQ(c->links[0].device, "/dev/shm/baton-1-3");
}

TEST(DaemonConfig, WorkersMakeShardsAndALinkMayServeOne) {
  auto c = parse_daemon_config(R"([node]
id = 1
[engine]
workers = [0, -1]
[client]
socket = "/tmp/b.sock"
[[link]]
peer = 2
device = "net_memif0,role=server,socket=/tmp/a.sock"
[[link]]
peer = 3
device = "net_af_packet0,iface=veth0"
shard = 0
[[link]]
peer = 3
device = "net_af_packet1,iface=veth1"
shard = 1
)", "shards.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->engine.workers, (std::vector<int>{0, -1}));
  ASSERT_EQ(c->links.size(), 3u);
  EXPECT_EQ(c->links[0].shard, -1) << "every shard: a queue pair each";
  EXPECT_EQ(c->links[1].shard, 0);
  EXPECT_EQ(c->links[2].shard, 1);
}

// batond's default shards: one per NUMA node that has a link, on a CPU of it.
TEST(DaemonConfig, DefaultWorkersOnePerNumaNodeWithALink) {
  auto t = Topology::load("synthetic:package:2 numa:2 core:4 pu:1");  // nodes 0-3, CPUs 0-3, 4-7, ...
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_TRUE(default_workers(*t, {}).empty());
  EXPECT_TRUE(default_workers(*t, {-1, -1}).empty()) << "virtual devices: one floating worker";
  EXPECT_TRUE(default_workers(*t, {2, 2, -1}).empty()) << "every link on one node: one worker";
  EXPECT_EQ(default_workers(*t, {3, 0, 3, -1}), (std::vector<int>{0, 12})) << "nodes 0 and 3";
  EXPECT_TRUE(default_workers(*t, {0, 9}).empty()) << "node 9 is not on this machine";
}

TEST(DaemonConfig, MinimalFileGetsDefaults) {
  auto c = parse_daemon_config("[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\n", "min.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->name, "node1");
  EXPECT_EQ(c->engine.replication_factor, 1u);
  EXPECT_EQ(c->engine.idle, IdlePolicy::kAdaptive);
  EXPECT_EQ(c->socket_mode, 0660u);
  EXPECT_EQ(c->max_clients_per_process, 16u);
  EXPECT_EQ(c->max_clients_per_user, 64u) << "a quarter of max_clients";
  auto few = parse_daemon_config("[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\nmax_clients = 2\n", "few.toml");
  ASSERT_TRUE(few) << few.error().message;
  EXPECT_EQ(few->max_clients_per_user, 1u);
  EXPECT_TRUE(c->links.empty());
  EXPECT_EQ(c->engine.blade, 0u);  // untagged: its own blade, unknown power domain
  EXPECT_EQ(c->engine.power_domain, 0u);
  EXPECT_EQ(c->engine.expected_votes, 0u);
  EXPECT_TRUE(c->engine.direct_reads);
  EXPECT_EQ(c->engine.chunk_size, 16384u);
  EXPECT_EQ(c->engine.membership, MembershipKind::kBackplane);
  EXPECT_FALSE(c->spare);
  EXPECT_TRUE(c->groups.empty());
}

TEST(DaemonConfig, ServiceGroupsParse) {
  auto c = parse_daemon_config(R"([node]
id = 4
spare = true
[client]
socket = "/tmp/b.sock"
[[link]]
peer = 3
device = "net_memif0,role=client,socket=/tmp/a.sock"
[[group]]
name = "kv"
segments = ["kv", "kv-index"]
start = "baton-kv --socket $BATON_SOCKET"
probe = "kv-ping"
provision = "prep"
alert = "page-someone"
home = [1, 2]
standby = [3]
standby_instances = true
priority = 7
min_cores = 2
min_memory_mib = 512
tags = ["nic=fast"]
probe_interval_ms = 250
slow_ms = 200
slow_for_ms = 3000
failover_on = "performance"
start_timeout_ms = 9000
[[group]]
name = "batch"
start = "run-batch"
metric = "queue_ms"
slow_above = 12.5
)", "groups.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_TRUE(c->spare);
  ASSERT_EQ(c->groups.size(), 2u);
  const auto& g = c->groups[0];
  EXPECT_EQ(g.name, "kv");
  EXPECT_EQ(g.segments, (std::vector<std::string>{"kv", "kv-index"}));
  EXPECT_EQ(g.home, (std::vector<uint16_t>{1, 2}));
  EXPECT_EQ(g.priority, 7);
  EXPECT_EQ(g.min_cores, 2u);
  EXPECT_EQ(g.min_memory_mib, 512u);
  EXPECT_EQ(g.tags, std::vector<std::string>{"nic=fast"});
  EXPECT_EQ(g.probe_interval_ms, 250u);
  EXPECT_EQ(g.slow_ms, 200u);
  EXPECT_EQ(g.slow_for_ms, 3000u);
  EXPECT_EQ(g.failover_on, failover::ServiceGroup::On::kPerformance);
  EXPECT_EQ(g.start_timeout_ms, 9000u);
  EXPECT_EQ(c->groups[1].metric, "queue_ms");
  EXPECT_DOUBLE_EQ(c->groups[1].slow_above, 12.5);
  EXPECT_EQ(c->groups[1].failover_on, failover::ServiceGroup::On::kEither);
  // A group's standbys keep each of its segments ready.
  EXPECT_EQ(g.standby, std::vector<uint16_t>{3});
  EXPECT_TRUE(g.standby_instances);
  EXPECT_FALSE(c->groups[1].standby_instances) << "the default";
  ASSERT_EQ(c->engine.standbys.size(), 2u);
  EXPECT_EQ(c->engine.standbys[0].segment, "kv");
  EXPECT_EQ(c->engine.standbys[1].segment, "kv-index");
  EXPECT_EQ(c->engine.standbys[1].nodes, std::vector<uint16_t>{3});
  // Home nodes 1 and 2: node 4 links to neither (only to 3).
  ASSERT_EQ(c->warnings.size(), 2u);
  EXPECT_NE(c->warnings[0].find("group[0].home: node 1 is neither this node nor one it has a link to"),
            std::string::npos)
      << c->warnings[0];
}

TEST(DaemonConfig, StandbyTablesNameOtherSegments) {
  const std::string links = R"([node]
id = 1
[client]
socket = "/tmp/b.sock"
[[link]]
peer = 2
device = "net_memif0,role=server,socket=/tmp/a.sock"
[[link]]
peer = 3
device = "net_memif1,role=server,socket=/tmp/c.sock"
)";
  auto c = parse_daemon_config(links + R"([engine]
replication_factor = 2
[[standby]]
segment = "orders"
nodes = [2, 3]
)", "standby.toml");
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_EQ(c->engine.standbys.size(), 1u);
  EXPECT_EQ(c->engine.standbys[0].segment, "orders");
  EXPECT_EQ(c->engine.standbys[0].nodes, (std::vector<uint16_t>{2, 3}));
  EXPECT_TRUE(c->warnings.empty()) << c->warnings.front();
  // This node may be named (every blade's config carries the same tables);
  // more standbys than replicas is allowed, and said.
  auto more = parse_daemon_config(links + "[[standby]]\nsegment = \"orders\"\nnodes = [1, 2, 3]\n", "more.toml");
  ASSERT_TRUE(more) << more.error().message;
  ASSERT_EQ(more->warnings.size(), 1u);
  EXPECT_NE(more->warnings[0].find("names 3 standby nodes, but engine.replication_factor is 1"), std::string::npos)
      << more->warnings[0];
  // A node no link reaches could never receive the segment.
  auto unknown = parse_daemon_config(links + "[[standby]]\nsegment = \"orders\"\nnodes = [99]\n", "unknown.toml");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("node 99 is neither this node nor one it has a link to"), std::string::npos)
      << unknown.error().message;
}

TEST(DaemonConfig, SnapshotModesParse) {
  auto c = parse_daemon_config(R"([node]
id = 1
[client]
socket = "/tmp/b.sock"
[snapshots]
mode = "copy-on-write"
commit_every_ms = 20
protect_ahead = true
[[snapshots.segment]]
name = "big"
mode = "stage-copy"
[[snapshots.segment]]
name = "hot"
commit_every_ms = 5
)", "snapshots.toml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->engine.snapshot_mode, EngineConfig::SnapshotMode::kCopyOnWrite);
  EXPECT_EQ(c->engine.commit_every_ms, 20u);
  EXPECT_TRUE(c->engine.cow_protect_ahead);
  ASSERT_EQ(c->engine.snapshot_modes.size(), 2u);
  EXPECT_EQ(c->engine.snapshot_modes[0].segment, "big");
  EXPECT_EQ(c->engine.snapshot_modes[0].mode, EngineConfig::SnapshotMode::kStageCopy);
  EXPECT_FALSE(c->engine.snapshot_modes[0].commit_every_ms.has_value());
  EXPECT_EQ(c->engine.snapshot_modes[1].mode, EngineConfig::SnapshotMode::kCopyOnWrite) << "as [snapshots] says";
  EXPECT_EQ(c->engine.snapshot_modes[1].commit_every_ms, 5u);
  ASSERT_EQ(c->warnings.size(), 0u) << "the stage-copy segment has no period of its own";
  auto plain = parse_daemon_config("[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\n", "plain.toml");
  ASSERT_TRUE(plain);
  // A period only copy-on-write segments can take: valid, and said.
  auto ignored = parse_daemon_config(
      "[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\n[snapshots]\ncommit_every_ms = 10\n"
      "[[snapshots.segment]]\nname = \"s\"\nmode = \"stage-copy\"\ncommit_every_ms = 5\n",
      "ignored.toml");
  ASSERT_TRUE(ignored) << ignored.error().message;
  ASSERT_EQ(ignored->warnings.size(), 2u);
  EXPECT_NE(ignored->warnings[0].find("stage-copy segments take no periodic commits"), std::string::npos);
  EXPECT_NE(ignored->warnings[1].find("snapshots.segment \"s\": commit_every_ms is ignored"), std::string::npos);
  EXPECT_EQ(plain->engine.snapshot_mode, EngineConfig::SnapshotMode::kStageCopy) << "the default";
  EXPECT_FALSE(plain->engine.cow_protect_ahead) << "the default";
}

struct Bad {
  const char* text;
  const char* expect;  // substring of the message
};

class DaemonConfigRejects : public ::testing::TestWithParam<Bad> {};

TEST_P(DaemonConfigRejects, WithTheFieldAndTheReason) {
  auto c = parse_daemon_config(GetParam().text, "bad.toml");
  ASSERT_FALSE(c) << GetParam().text;
  EXPECT_EQ(c.error().code, Errc::kInvalidArgument);
  EXPECT_NE(c.error().message.find(GetParam().expect), std::string::npos) << c.error().message;
  EXPECT_EQ(c.error().message.rfind("bad.toml", 0), 0u) << c.error().message;
}

constexpr const char* kSock = "[client]\nsocket = \"/tmp/b.sock\"\n";
#define NODE_AND(rest) "[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\n" rest

INSTANTIATE_TEST_SUITE_P(
    Mistakes, DaemonConfigRejects,
    ::testing::Values(
        Bad{"[node\nid = 1", "bad.toml:1"},                                       // TOML syntax, with line
        Bad{kSock, "node: the [node] table is required"},
        Bad{"[node]\nname = \"x\"\n[client]\nsocket = \"/tmp/b.sock\"\n", "node.id: is required"},
        Bad{"[node]\nid = 0\n[client]\nsocket = \"/tmp/b.sock\"\n", "node.id: must be 1..65534 (got 0)"},
        Bad{"[node]\nid = \"one\"\n[client]\nsocket = \"/tmp/b.sock\"\n", "node.id: must be an integer"},
        Bad{"[node]\nid = 1\nidd = 2\n[client]\nsocket = \"/tmp/b.sock\"\n", "node.idd: unknown key"},
        Bad{"[node]\nid = 1\n", "client: the [client] table is required"},
        Bad{"[node]\nid = 1\nname = \"blade\\n\\u0007\"\n[client]\nsocket = \"/tmp/b.sock\"\n",
            "node.name: must be 1..63 printable characters"},
        Bad{NODE_AND("[engine]\nheartbeat_us = 100000\nfailure_timeout_us = 1000\n"),
            "engine.failure_timeout_us: is 1000 us; it must be at least twice engine.heartbeat_us (100000 us)"},
        Bad{NODE_AND("[engine]\nheartbeat_us = 100000\n"),
            "engine.failure_timeout_us: is 150000 us; it must be at least twice engine.heartbeat_us (100000 us)"},
        Bad{"[node]\nid = 1\n[client]\nsocket = \"relative.sock\"\n", "client.socket: must be an absolute path"},
        Bad{"[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\nmax_clients_per_process = 0\n",
            "client.max_clients_per_process: must be 1..4096"},
        Bad{"[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\nmax_clients_per_user = 0\n",
            "client.max_clients_per_user: must be 1..4096"},
        Bad{NODE_AND("[engine]\nreplication_factor = 0\n"), "engine.replication_factor: must be 1..4"},
        Bad{NODE_AND("[engine]\nidle = \"lazy\"\n"), "engine.idle: must be \"spin\" or \"adaptive\""},
        Bad{NODE_AND("[engine]\nworker_cpu = -2\n"), "engine.worker_cpu: must be -1..4095"},
        Bad{NODE_AND("[engine]\nnuma_node = 1024\n"), "engine.numa_node: must be -1..1023"},
        Bad{NODE_AND("[engine]\nworkers = []\n"), "engine.workers: must be an array of 1..64 CPU numbers"},
        Bad{NODE_AND("[engine]\nworkers = [0, -2]\n"), "engine.workers: must be an array of CPU numbers"},
        Bad{NODE_AND("[engine]\nworkers = \"all\"\n"), "engine.workers: must be an array"},
        Bad{NODE_AND("[engine]\ndirect_reads = 1\n"), "engine.direct_reads: must be true or false"},
        Bad{NODE_AND("[engine]\nchunk_kib = 61\n"), "engine.chunk_kib: must be 1..60"},
        Bad{NODE_AND("[engine]\nworkers = [0, 1]\nworker_cpu = 1\n"), "engine.workers: and engine.worker_cpu both"},
        Bad{NODE_AND("[[link]]\npeer = 2\ndevice = \"x\"\nshard = 1\n"),
            "link[0].shard: is 1; engine.workers makes 1 shard"},
        Bad{NODE_AND("[[link]]\npeer = 2\ndevice = \"x\"\nshard = -2\n"), "link[0].shard: must be -1..63"},
        Bad{NODE_AND("[engine]\ntopology = 2\n"), "engine.topology: must be a string"},
        Bad{"[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\nuser = \"no-such-user-xyz\"\n",
            "client.user: no such user"},
        Bad{"[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\nmode = \"0999\"\n", "client.mode: must be an octal"},
        Bad{NODE_AND("[log]\nlevel = \"loud\"\n"), "log.level: must be error, warn, info or debug"},
        Bad{NODE_AND("[[link]]\ndevice = \"x\"\n"), "link[0].peer: is required"},
        Bad{NODE_AND("[[link]]\npeer = 1\ndevice = \"x\"\n"), "link[0].peer: is this node's own id"},
        Bad{NODE_AND("[[link]]\npeer = 2\ndevice = \"x\"\n[[link]]\npeer = 3\ndevice = \"x\"\n"),
            "link[1].device: is already another link's device"},
        // What DPDK would refuse, or take and never link, said before it starts.
        Bad{NODE_AND("[[link]]\npeer = 2\ndevice = \"net_memif0,socket=/tmp/a.sock\"\n"),
            "link[0].device: a memif device needs role=server or role=client"},
        Bad{NODE_AND("[[link]]\npeer = 2\ndevice = \"net_memif0,role=master,socket=/tmp/a.sock\"\n"),
            "link[0].device: role=master: a memif role is server or client"},
        Bad{NODE_AND("[[link]]\npeer = 2\ndevice = \"net_memif0,role=server,socket=/tmp/a.sock\"\n"
                     "[[link]]\npeer = 3\ndevice = \"net_memif0,role=server,socket=/tmp/b.sock\"\n"),
            "link[1].device: names DPDK device net_memif0, which another link's device names already"},
        Bad{NODE_AND("[[link]]\npeer = 2\ndevice = \"net_memif0,role=server,socket=/tmp/a.sock\"\n"
                     "[[link]]\npeer = 3\ndevice = \"net_memif1,role=server,socket=/tmp/a.sock\"\n"),
            "link[1].device: is a memif server on socket /tmp/a.sock id 0, as another link's device is already"},
        Bad{NODE_AND("[[link]]\npeer = 2\ndevice = \"net_af_packet0,qpairs=1\"\n"),
            "link[0].device: an af_packet device needs iface="},
        Bad{NODE_AND("[[link]]\npeer = 2\ndriver = \"pigeon\"\ndevice = \"x\"\n"), "link[0].driver: unknown driver"},
        Bad{NODE_AND("[[link]]\npeer = 2\n"), "link[0].device: is required"},
        Bad{NODE_AND("[engine]\nexpected_votes = 1\n[[link]]\npeer = 2\ndevice = \"x\"\n"),
            "engine.expected_votes: is 1, below the 2 nodes this one links to (itself included)"},
        Bad{NODE_AND("[[link]]\npeer = 2\ndriver = \"shm\"\ndevice = \"region\"\n"),
            "link[0].device: a shm link's region must be an absolute path"},
        Bad{NODE_AND("[storage]\ndir = \"relative\"\n"), "storage.dir: must be an absolute path"},
        Bad{NODE_AND("[storage]\ndir = \"/x\"\nkeep = 0\n"), "storage.keep: must be 1..1000"},
        Bad{NODE_AND("[storage]\ndir = \"/x\"\nstop_wait_ms = 0\n"), "storage.stop_wait_ms: must be 100..3600000"},
        Bad{NODE_AND("[storage]\ndir = \"/x\"\nbuffer_mib = 0\n"), "storage.buffer_mib: must be 1..1048576"},
        Bad{NODE_AND("[membership]\nsource = \"gossip\"\n"), "membership.source: must be backplane or corosync"},
        Bad{NODE_AND("[membership]\ngroup = \"\"\n"), "membership.group: must be 1..128 bytes"},
        Bad{NODE_AND("[membership]\nquorum = 3\n"), "membership.quorum: unknown key"},
        Bad{NODE_AND("[[group]]\nstart = \"x\"\n"), "group[0].name: is required"},
        Bad{NODE_AND("[[group]]\nname = \"a b\"\nstart = \"x\"\n"), "group[0].name: must be 1..63 printable"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\n"), "group[0].start: is required"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\n[[group]]\nname = \"a\"\nstart = \"y\"\n"),
            "group[1].name: \"a\" is used twice"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nslow_ms = 100\n"), "group[0].slow_ms: needs a probe"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nslow_above = 5\n"), "group[0].slow_above: needs a metric"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nprobe = \"p\"\nslow_ms = 9\nmetric = \"m\"\n"),
            "group[0].metric: slowness is judged by slow_ms (the probe) or by a metric, not both"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nfailover_on = \"never\"\n"),
            "group[0].failover_on: must be failure, performance or either"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nhome = [0]\n"), "group[0].home: must be an array of node ids"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nsegments = [\"no good\"]\n"),
            "group[0].segments: \"no good\" is not a segment name"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nsurprise = 1\n"), "group[0].surprise: unknown key"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nstandby = [2]\n"), "group[0].standby: needs segments"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nstandby_instances = true\n"),
            "group[0].standby_instances: needs standby nodes"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nsegments = [\"a\"]\nstart = \"x\"\nstandby = [2]\nstandby_instances = 1\n"),
            "group[0].standby_instances: must be true or false"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nsegments = [\"s\"]\nstandby = [2, 2]\n"),
            "group[0].standby: names node 2 twice"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nsegments = [\"s\", \"s\"]\n"),
            "group[0].segments: names \"s\" twice"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nsegments = [\"s\"]\n"
                     "[[group]]\nname = \"b\"\nstart = \"y\"\nsegments = [\"t\", \"s\"]\n"),
            "group[1].segments: \"s\" is group \"a\"'s already"},
        Bad{NODE_AND("[[group]]\nname = \"a\"\nstart = \"x\"\nfailover_on = \"performance\"\n"),
            "group[0].failover_on: \"performance\" needs slow_ms"},
        Bad{NODE_AND("[[standby]]\nnodes = [2]\n"), "standby[0].segment: is required"},
        Bad{NODE_AND("[[standby]]\nsegment = \"s\"\n"), "standby[0].nodes: 1..4 node ids"},
        Bad{NODE_AND("[[standby]]\nsegment = \"s\"\nnodes = [70000]\n"), "standby[0].nodes: must be an array of node ids"},
        Bad{NODE_AND("[[standby]]\nsegment = \"s\"\nnodes = [2]\n[[standby]]\nsegment = \"s\"\nnodes = [3]\n"),
            "standby[1].segment: \"s\" has standbys already"},
        Bad{NODE_AND("[snapshots]\nmode = \"fork\"\n"), "snapshots.mode: must be \"stage-copy\" or \"copy-on-write\""},
        Bad{NODE_AND("[snapshots]\ncommit_every_ms = -1\n"), "snapshots.commit_every_ms: must be 0..3600000"},
        Bad{NODE_AND("[snapshots]\nprotect_ahead = \"yes\"\n"), "snapshots.protect_ahead: must be true or false"},
        Bad{NODE_AND("[snapshots]\nevery = 1\n"), "snapshots.every: unknown key"},
        Bad{NODE_AND("[[snapshots.segment]]\nmode = \"stage-copy\"\n"), "snapshots.segment[0].name: is required"},
        Bad{NODE_AND("[[snapshots.segment]]\nname = \"a\"\n[[snapshots.segment]]\nname = \"a\"\n"),
            "snapshots.segment[1].name: \"a\" appears twice"},
        Bad{NODE_AND("[surprise]\nx = 1\n"), "surprise: unknown key"}));

TEST(DaemonConfig, UnreadableFile) {
  auto c = load_daemon_config("/nonexistent/baton.toml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, Errc::kIo);
  auto dir = load_daemon_config("/tmp");
  ASSERT_FALSE(dir);
  EXPECT_NE(dir.error().message.find("/tmp: is a directory"), std::string::npos) << dir.error().message;
}

// batond --check also checks what a config asks of this machine, which
// batond would otherwise find only as it starts.
TEST(DaemonConfig, TheHostCheckNamesWhatThisMachineLacks) {
  auto check = [](const std::string& rest) {
    auto c = parse_daemon_config("[node]\nid = 1\n[client]\nsocket = \"/tmp/b.sock\"\n" + rest, "host.toml");
    EXPECT_TRUE(c) << c.error().message;
    return check_daemon_host(*c, "host.toml");
  };
  EXPECT_TRUE(check("")) << "the minimal file on this machine";
  EXPECT_TRUE(check("[engine]\nworkers = [0]\nnuma_node = 0\n"));
  auto expect = [&](const std::string& rest, const std::string& says) {
    auto r = check(rest);
    ASSERT_FALSE(r) << rest;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    EXPECT_NE(r.error().message.find(says), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.rfind("host.toml: ", 0), 0u) << r.error().message;
  };
  expect("[engine]\nworkers = [0, 999]\n", "engine.workers: CPU 999 does not exist here (CPUs ");
  expect("[engine]\nworker_cpu = 999\n", "engine.worker_cpu: CPU 999 does not exist here");
  expect("[engine]\nnuma_node = 77\n", "engine.numa_node: NUMA node 77 does not exist here");
  expect("[engine]\ntopology = \"garbage:::\"\n", "engine.topology: cannot read this machine's topology");
  auto c = parse_daemon_config("[node]\nid = 1\n[client]\nsocket = \"/nonexistent/dir/b.sock\"\n", "host.toml");
  ASSERT_TRUE(c);
  auto r = check_daemon_host(*c, "host.toml");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("client.socket: its directory /nonexistent/dir does not exist"), std::string::npos)
      << r.error().message;
  // Global storage that cannot be written, found before the start (a
  // session 36 operator trial: --check said ok, the start failed naming
  // no field, or started and only logged every generation's failure).
  char tmpl[] = "/tmp/baton-host-XXXXXX";
  const std::string scratch = mkdtemp(tmpl);
  std::ofstream(scratch + "/file") << "x";
  EXPECT_TRUE(check("[storage]\ndir = \"" + scratch + "/to/be/made\"\n")) << "a directory it can make";
  expect("[storage]\ndir = \"" + scratch + "/file\"\n", "storage.dir: " + scratch + "/file is not a directory");
  if (geteuid() != 0) {  // root writes anything
    chmod(scratch.c_str(), 0500);
    expect("[storage]\ndir = \"" + scratch + "/sub\"\n", "storage.dir: cannot write in " + scratch);
    chmod(scratch.c_str(), 0700);
  }
  // Where access() says yes to root and the file system no (a session 37
  // storage trial: --check said ok, the start failed naming no field).
  expect("[storage]\ndir = \"/proc/baton-store\"\n", "storage.dir: cannot write in /proc to make /proc/baton-store");
  expect("[storage]\ndir = \"/proc/self\"\n", "storage.dir: cannot write /proc/self");
  EXPECT_TRUE(check("[storage]\ndir = \"" + scratch + "\"\n")) << "an existing directory";
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(scratch), {}), 1) << "the probe is removed";
  std::filesystem::remove_all(scratch);
}

}  // namespace
}  // namespace baton
