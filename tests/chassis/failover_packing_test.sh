#!/usr/bin/env bash
# Groups share a node by capacity (issue #12, S18-S19): a 5-blade chassis,
# blades 1-3 with 2 cores, blades 4 and 5 declaring none. Groups kv1 (home
# blade 1) and kv2 (home blade 2) each need 1 core; their state is in
# segments kv1 and kv2.
#
#  1. Both start at home.
#  2. Blade 1's batond is SIGKILLed: kv1 fails over to the one idle node
#     with a core to spare, blade 3, and resumes from its last durable batch.
#  3. Blade 2's batond is SIGKILLed: no node is idle and eligible, but blade
#     3 has a core left beside kv1: kv2 runs there too, resumes from its last
#     durable batch, and kv1 goes on running (nothing was stopped for it).
#
# Needs BATONCTL and BATON_KV (meson passes them).
set -euo pipefail
source "$(dirname "$0")/failover_lib.sh"
fo_begin baton-fop 5

{
  for g in 1 2; do
    cat <<TOML
[[group]]
name = "kv$g"
segments = ["kv$g"]
start = "exec $BATON_KV --socket \$BATON_SOCKET --name kv$g --batches 1000000 --every-ms 20 >$dir/kv$g-\$BATON_NODE-\$BATON_ASSIGNMENT.log 2>&1"
home = [$g]
min_cores = 1
start_timeout_ms = 10000
TOML
  done
} >"$dir/groups.toml"
"$BATONCTL" chassis up --blades 5 --replicas 2 --dir "$chassis" --groups "$dir/groups.toml" --cores 2,2,2,0,0 \
  >/dev/null || fail "chassis up"

# where_group NAME BLADE: "node state" of group NAME as BLADE reports it.
where_group() {
  "$BATONCTL" groups --json --socket "$chassis/blade$2.sock" 2>/dev/null |
    python3 -c 'import json,sys; g=[g for g in json.load(sys.stdin)["groups"] if g["name"]==sys.argv[1]][0]; print(g["node"], g["state"])' "$1"
}
# expect NAME NODE BLADE: group NAME runs on NODE within 20 s, as BLADE sees it.
expect() {
  local got
  for _ in $(seq 1 200); do
    got=$(where_group "$1" "$3" || true)
    [[ $got == "$2 running" ]] && return 0
    sleep 0.1
  done
  fail "$1 is '$got', expected '$2 running'"
}
# durable_of NAME NODE: the last batch group NAME's newest instance on NODE was told is durable.
durable_of() { durable "$(ls -t "$dir"/"$1"-"$2"-*.log | head -1)"; }
# resumed NAME NODE N: the newest instance of NAME on NODE restored batch N or later.
resumed() {
  local log got
  log=$(ls -t "$dir"/"$1"-"$2"-*.log | head -1)
  for _ in $(seq 1 100); do grep -q "^restored" "$log" && break; sleep 0.1; done
  got=$(grep -o "^restored generation=[0-9]* batches=[0-9]*" "$log" | sed 's/.*batches=//')
  [[ -n $got ]] || fail "$1 on blade $2 did not restore its state"
  ((got >= $3)) || fail "$1 on blade $2 resumed at batch $got; batch $3 was durable"
  echo "   $1 resumed at batch $got (last durable seen: $3)"
}
# kill_blade N: SIGKILL blade N's batond and its applications.
kill_blade() {
  kill -KILL "$(cat "$chassis/blade$1.pid")"
  pkill -KILL -f "baton-kv --socket $chassis/blade$1.sock" || true
}

echo "1. both groups start at home"
expect kv1 1 3
expect kv2 2 3
for g in 1 2; do
  for _ in $(seq 1 100); do (($(durable_of kv$g $g) >= 10)) && break; sleep 0.1; done
done

echo "2. blade 1 dies: kv1 goes to the idle blade 3"
last1=$(durable_of kv1 1)
kill_blade 1
expect kv1 3 3
resumed kv1 3 "$last1"
# The chosen blade's own events say why it was chosen (the decision travels
# with the assignment). Whichever node coordinated: node 2 as a rule, but a
# view in which blade 3 suspected blade 2 for a moment makes it node 3.
"$BATONCTL" events --socket "$chassis/blade3.sock" >"$dir/blade3-events.txt" || true
grep "group kv1: starting here (assignment [0-9]* from node [23]); the decision: group kv1 -> node 3 (failover" \
  "$dir/blade3-events.txt" >/dev/null || {
  grep "kv1" "$dir/blade3-events.txt" || true
  fail "blade 3 does not say why kv1 came to it"
}

echo "3. blade 2 dies: no idle node has a core; kv2 runs beside kv1 on blade 3"
for _ in $(seq 1 100); do (($(durable_of kv1 3) > last1 + 5)) && break; sleep 0.1; done
last2=$(durable_of kv2 2)
kill_blade 2
expect kv2 3 3
resumed kv2 3 "$last2"
[[ "$(where_group kv1 3)" == "3 running" ]] || fail "kv1 stopped on blade 3 to make room for kv2"
before=$(durable_of kv1 3)
for _ in $(seq 1 100); do (($(durable_of kv1 3) > before + 5)) && break; sleep 0.1; done
(($(durable_of kv1 3) > before)) || fail "kv1 stopped committing beside kv2"
"$BATONCTL" events --socket "$chassis/blade3.sock" | grep "group kv2 -> node 3 (failover" >/dev/null ||
  fail "no decision named blade 3 for kv2"
"$BATONCTL" events --socket "$chassis/blade3.sock" | grep "group kv1 stops here" >/dev/null &&
  fail "blade 3 stopped kv1"
echo "PASS"
