#!/usr/bin/env bash
# A performance failover judged by a metric the application reports itself
# (baton_report; issue #12 item 2): a 3-blade chassis, blade 3 with 8 cores;
# group kv (home blade 1) fails over when its reported batch_ms stays above
# 50 for half a second. A quarter-second dip moves nothing. Then blade 1's
# application slows down for good (each batch 100 ms longer): the group
# moves to blade 3 and resumes from its last durable batch; blade 1 says
# which metric made it slow.
# Needs BATONCTL and BATON_KV (meson passes them).
set -euo pipefail
source "$(dirname "$0")/failover_lib.sh"
fo_begin baton-fom 3
cat >"$dir/groups.toml" <<TOML
[[group]]
name = "kv"
segments = ["kv"]
start = "exec $BATON_KV --socket \$BATON_SOCKET --name kv --batches 1000000 --every-ms 20 --report-metric batch_ms --slow-file $dir/slow-\$BATON_NODE >$dir/kv-\$BATON_NODE-\$BATON_ASSIGNMENT.log 2>&1"
home = [1]
metric = "batch_ms"
slow_above = 50
slow_for_ms = 500
TOML
"$BATONCTL" chassis up --blades 3 --replicas 2 --dir "$chassis" --groups "$dir/groups.toml" --cores 2,2,8 >/dev/null ||
  fail "chassis up"
expect_at 1
old=$(ls "$dir"/kv-1-*.log | head -1)
for _ in $(seq 1 100); do (($(durable "$old") >= 10)) && break; sleep 0.1; done
echo "1. fast on blade 1: it stays; a dip shorter than the window moves nothing"
sleep 1
[[ "$(where 2)" == "1 running" ]] || fail "kv moved while fast"
touch "$dir/slow-1"
sleep 0.25
rm -f "$dir/slow-1"
sleep 1.5
[[ "$(where 2)" == "1 running" ]] || fail "a dip shorter than the window moved kv"
if "$BATONCTL" events --socket "$chassis/blade1.sock" | grep "group kv is slow here" >/dev/null; then
  fail "a dip shorter than the window counted as slow"
fi
echo "2. blade 1's application slows down: batch_ms above 50 for 500 ms moves it to blade 3"
touch "$dir/slow-1"
expect_at 3
last=$(durable "$old")
new=$(ls -t "$dir"/kv-3-*.log | head -1)
for _ in $(seq 1 100); do grep -q "^restored" "$new" && break; sleep 0.1; done
got=$(grep -o "^restored generation=[0-9]* batches=[0-9]*" "$new" | sed 's/.*batches=//')
[[ -n $got ]] || fail "kv on blade 3 did not restore"
((got >= last)) || fail "kv resumed at batch $got; batch $last was durable"
"$BATONCTL" events --socket "$chassis/blade1.sock" | grep "group kv is slow here: every batch_ms report above 50" >/dev/null ||
  fail "blade 1 did not say why it is slow"
"$BATONCTL" events --socket "$chassis/blade1.sock" | grep "group kv -> node 3 (performance move, assignment [0-9]*): batch_ms above 50 for 500 ms on node 1" >/dev/null ||
  fail "no performance move decided, naming the metric"
echo "   resumed at batch $got (last durable $last)"
# Newer than the old instance printed (it was stopped between a commit and
# its line): show how the group moved, for whoever reads the log.
if ((got != last)); then
  for b in 1 2 3; do "$BATONCTL" events --socket "$chassis/blade$b.sock" | grep "group kv" | sed "s/^/   blade $b: /"; done
fi
echo "PASS"
