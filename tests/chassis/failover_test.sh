#!/usr/bin/env bash
# Failover decisions on real processes (issue #12): a 4-blade chassis whose
# batonds run a service group (baton-kv, its state in segment "kv") and
# decide where it runs. Blades 3 and 4 are the spare pool; blade 4 has 8
# cores, the others 2.
#
#  1. The group starts on its home, blade 1, and commits durable batches.
#  2. Its probe turns slow: after the window it moves to the only node with
#     better capabilities (blade 4), and resumes from the last durable batch.
#  3. Its application is SIGKILLed there: it fails over to the spare pool
#     (blade 3), whose provision hook fails, so to the next node (blade 1;
#     blade 2's hook fails too, as it may come first if it holds a replica),
#     and resumes from the last durable batch.
#  4. Blade 1's batond is SIGKILLed: a new coordinator moves it to blade 4.
#  5. Every other node is made to fail: the application is killed with no
#     eligible node left, and the alert hook runs with the reason.
# Every decision names its reasons in the coordinator's events.
#
# Needs BATONCTL and BATON_KV (meson passes them).
set -euo pipefail
source "$(dirname "$0")/failover_lib.sh"
fo_begin baton-fo 4

cat >"$dir/groups.toml" <<TOML
[[group]]
name = "kv"
segments = ["kv"]
start = "exec $BATON_KV --socket \$BATON_SOCKET --name kv --batches 1000000 --every-ms 20 --dump $dir/n\$BATON_NODE >$dir/kv-\$BATON_NODE-\$BATON_ASSIGNMENT.log 2>&1"
probe = "test ! -f $dir/slow-\$BATON_NODE || sleep 0.3"
provision = "mkdir -p $dir/n\$BATON_NODE && test ! -f $dir/broken-\$BATON_NODE"
alert = "echo \"\$BATON_GROUP: \$BATON_REASON\" >$dir/alert"
home = [1]
priority = 5
min_cores = 2
probe_interval_ms = 100
slow_ms = 200
slow_for_ms = 1000
start_timeout_ms = 10000
TOML
"$BATONCTL" chassis up --blades 4 --replicas 2 --dir "$chassis" --groups "$dir/groups.toml" --spares 3,4 \
  --cores 2,2,2,8 >/dev/null || fail "chassis up"

# batches N: the batch count in blade N's last durable dump.
batches() { od -An -t u8 -N 8 "$dir/n$1/committed.bin" | tr -d ' '; }
# commits_past BLADE N: blade BLADE's instance commits beyond batch N.
commits_past() {
  for _ in $(seq 1 200); do
    [[ -f $dir/n$1/committed.bin ]] && (($(batches "$1") > $2)) && return 0
    sleep 0.1
  done
  fail "kv on blade $1 did not commit past batch $2"
}
# resumed BLADE N: blade BLADE's newest instance restored batch N or later.
resumed() {
  local log
  log=$(ls -t "$dir"/kv-"$1"-*.log | head -1)
  local got
  got=$(grep -o "restored generation=[0-9]* batches=[0-9]*" "$log" | sed 's/.*batches=//')
  [[ -n $got ]] || fail "kv on blade $1 did not restore its state ($(cat "$log"))"
  ((got >= $2)) || fail "kv on blade $1 resumed at batch $got; batch $2 was durable"
  echo "   resumed at batch $got (last durable seen: $2)"
}
decided() {  # decided TEXT: the coordinator (blade ${2:-1}) logged a decision with TEXT
  "$BATONCTL" events --socket "$chassis/blade${2:-1}.sock" | grep -- "$1" >/dev/null || fail "no decision mentions '$1'"
}

echo "1. starts at home (blade 1)"
expect_at 1
commits_past 1 20

echo "2. slow probe on blade 1: a performance move to the node with better capabilities"
touch "$dir/slow-1"
expect_at 4
last=$(batches 1)
resumed 4 "$last"
decided "group kv -> node 4 (performance move"
decided "node 2: no better than node 1"
commits_past 4 "$last"
rm -f "$dir/slow-1"

echo "3. the application is killed on blade 4: the spare pool's blade 3 fails to provision, blade 1 takes it"
touch "$dir/broken-3" "$dir/broken-2"
last=$(batches 4)
pkill -KILL -f "baton-kv --socket $chassis/blade4.sock"
expect_at 1
resumed 1 "$last"
decided "group kv -> node 3 (failover"
# Seen as it died: by the lock its client library held, or by its pidfd when
# the lock's watcher thread had not run yet on a busy machine.
decided "failed on node 4: the application (pid [0-9]*) \(ended: its liveness lock was released as it exited\|was killed by signal 9\)"
decided "failed on node 3: the provision hook exited with status 1"
decided "group kv -> node 1 (failover"
rm -f "$dir/broken-2"
commits_past 1 "$last"

echo "4. blade 1's batond is killed: its application ends with it, and the next coordinator (blade 2) moves it to blade 4"
last=$(batches 1)
kill -KILL "$(cat "$chassis/blade1.pid")"
for _ in $(seq 1 100); do pgrep -f "baton-kv --socket $chassis/blade1.sock" >/dev/null || break; sleep 0.1; done
! pgrep -f "baton-kv --socket $chassis/blade1.sock" >/dev/null || fail "the application on blade 1 outlived its batond by 10 s"
expect_at 4
resumed 4 "$last"
decided "node 1 left the view" 2
commits_past 4 "$last"

echo "5. no eligible node left: the alert hook runs"
touch "$dir/broken-2"
pkill -KILL -f "baton-kv --socket $chassis/blade4.sock"
for _ in $(seq 1 100); do [[ -f $dir/alert ]] && break; sleep 0.1; done
[[ -f $dir/alert ]] || fail "the alert hook did not run"
grep -q "kv: .*no eligible node" "$dir/alert" || fail "the alert says: $(cat "$dir/alert")"
echo "   alert: $(cat "$dir/alert")"
echo "PASS"
