#!/usr/bin/env bash
# Standby instances (S16, issue #12): a 3-blade chassis runs group kv at home
# on blade 1; blades 2 and 3 are its hot standbys with standby instances, so
# baton-kv already runs there, connected and waiting to be promoted.
#
#  1. The group starts at home; a standby instance waits on blades 2 and 3
#     (batonctl groups shows them ready).
#  2. The application is SIGKILLed on blade 1: the group goes to a standby
#     blade, whose waiting instance is promoted (the same pid: no process
#     starts) and resumes from the last durable batch; its open takes the
#     load batond made in its name (clients.handed_over).
#  3. The other standby instance is SIGKILLed: it is started again.
#  4. The promoted instance is SIGKILLed: the group goes to the other
#     standby blade, promoted again, and resumes; the blade it left starts
#     a standby instance of its own again.
#
# Needs BATONCTL and BATON_KV (meson passes them).
set -euo pipefail
source "$(dirname "$0")/failover_lib.sh"
fo_begin baton-fos 3

cat >"$dir/groups.toml" <<TOML
[[group]]
name = "kv"
segments = ["kv"]
start = "exec $BATON_KV --socket \$BATON_SOCKET --name kv --batches 1000000 --every-ms 20 >$dir/kv-\$BATON_NODE-\$BATON_ASSIGNMENT.log 2>&1"
provision = "touch $dir/provisioned-\$BATON_NODE-\$BATON_ROLE"
home = [1]
standby = [2, 3]
standby_instances = true
start_timeout_ms = 10000
TOML
"$BATONCTL" chassis up --blades 3 --replicas 2 --dir "$chassis" --groups "$dir/groups.toml" >/dev/null ||
  fail "chassis up"

# standby BLADE: the pid of BLADE's ready standby instance, or nothing.
standby() {
  "$BATONCTL" groups --json --socket "$chassis/blade$1.sock" 2>/dev/null |
    python3 -c 'import json,re,sys; s=json.load(sys.stdin).get("standby_instances",{}).get("kv",""); m=re.match(r"ready \(pid (\d+)\)", s); print(m.group(1) if m else "")'
}
# ready BLADE: waits up to 20 s for a ready standby instance on BLADE; prints its pid.
ready() {
  local pid
  for _ in $(seq 1 200); do
    pid=$(standby "$1" || true)
    [[ -n $pid ]] && { echo "$pid"; return 0; }
    sleep 0.1
  done
  fail "no standby instance is ready on blade $1"
}
# running_pid BLADE: the pid of kv's application on BLADE (its runner's event).
running_pid() {
  "$BATONCTL" events --socket "$chassis/blade$1.sock" | grep -o "group kv runs here (pid [0-9]*" | tail -1 |
    grep -o "[0-9]*$"
}
# resumed_from LOG N: LOG's instance was promoted and restored batch N or later.
resumed_from() {
  local got
  for _ in $(seq 1 100); do grep -q "^restored" "$1" && break; sleep 0.1; done
  grep -q "^standby: promoted" "$1" || fail "$1 was not promoted ($(cat "$1"))"
  got=$(grep -o "^restored generation=[0-9]* batches=[0-9]*" "$1" | sed 's/.*batches=//')
  [[ -n $got ]] || fail "$1 did not restore the state"
  ((got >= $2)) || fail "$1 resumed at batch $got; batch $2 was durable"
  echo "   resumed at batch $got (last durable seen: $2)"
}
# commits_in LOG N: LOG's instance reports a durable batch past N within 20 s.
commits_in() {
  for _ in $(seq 1 200); do (($(durable "$1") > $2)) && return 0; sleep 0.1; done
  fail "$1 did not commit past batch $2"
}

echo "1. kv starts at home; standby instances wait on blades 2 and 3"
expect_at 1
home_log=$(ls "$dir"/kv-1-*.log)
commits_in "$home_log" 10
s2=$(ready 2)
s3=$(ready 3)
grep -q "^standby: waiting to be promoted" "$dir/kv-2-0.log" || fail "blade 2's instance does not wait"
[[ -f $dir/provisioned-2-standby && -f $dir/provisioned-3-standby ]] || fail "the standby instances were not provisioned"
echo "   standby instances: blade 2 pid $s2, blade 3 pid $s3"
# DPDK telemetry says the same (/baton/groups), read with the field's own tool.
if command -v dpdk-telemetry.py >/dev/null; then
  prefix=$("$BATONCTL" status --json --socket "$chassis/blade2.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["telemetry"])')
  tel=$(echo /baton/groups | timeout 20 dpdk-telemetry.py -f "$prefix" 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read()
g = json.loads(text[text.index("{\"/baton/groups\""):].split("\n")[0])["/baton/groups"]
print(g["coordinator"], g["groups"], g["group_0"]["name"], g["group_0"]["node"], g["group_0"]["state"],
      g["group_0"]["standby_instance_here"], g["node_3"]["runs"] or "-")') || fail "no /baton/groups answer"
  [[ $tel == "1 1 kv 1 running ready (pid $s2) -" ]] || fail "/baton/groups says: $tel"
  echo "   /baton/groups: $tel"
fi

echo "2. kv is killed on blade 1: a standby instance is promoted"
pkill -KILL -f "baton-kv --socket $chassis/blade1.sock"
last=$(durable "$home_log")
got=""
for _ in $(seq 1 200); do
  got=$(where 1 || true)
  [[ $got == "2 running" || $got == "3 running" ]] && break
  sleep 0.1
done
to=${got%% *}
[[ $got == "$to running" && ($to == 2 || $to == 3) ]] || fail "kv is '$got', expected on a standby blade"
other=$((5 - to))
promoted=$([[ $to == 2 ]] && echo "$s2" || echo "$s3")
[[ $(running_pid "$to") == "$promoted" ]] || fail "blade $to runs pid $(running_pid "$to"), not its standby instance $promoted"
kill -0 "$promoted" || fail "the promoted instance $promoted is gone"
resumed_from "$dir/kv-$to-0.log" "$last"
commits_in "$dir/kv-$to-0.log" "$last"
"$BATONCTL" events --socket "$chassis/blade$to.sock" | grep -q "its standby instance (pid $promoted) takes it" ||
  fail "blade $to's events do not say its standby instance took the group"
# The load was made in the instance's name: its open took it as it stood.
handed=$("$BATONCTL" status --json --socket "$chassis/blade$to.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["clients"]["handed_over"])')
((handed >= 1)) || fail "blade $to's promoted instance opened afresh (clients.handed_over = $handed)"
echo "   blade $to promoted pid $promoted (its open handed over the load)"

echo "3. blade $other's standby instance is killed: it starts again"
old=$(standby "$other")
kill -KILL "$old"
new=""
for _ in $(seq 1 100); do
  new=$(standby "$other" || true)
  [[ -n $new && $new != "$old" ]] && break
  sleep 0.1
done
[[ -n $new && $new != "$old" ]] || fail "blade $other did not start its standby instance again"
"$BATONCTL" events --socket "$chassis/blade$other.sock" | grep -q "its standby instance here ended: it was killed by signal 9" ||
  fail "blade $other's events do not say its standby instance ended"
echo "   blade $other: pid $old killed, pid $new waits"

echo "4. the promoted instance is killed: blade $other's is promoted; blade $to waits again"
last=$(durable "$dir/kv-$to-0.log")
cp "$dir/kv-$to-0.log" "$dir/first-promoted.log"
kill -KILL "$promoted"
expect_at "$other" "$other"
[[ $(running_pid "$other") == "$new" ]] || fail "blade $other runs pid $(running_pid "$other"), not its standby instance $new"
resumed_from "$dir/kv-$other-0.log" "$last"
commits_in "$dir/kv-$other-0.log" "$last"
back=$(ready "$to")
[[ $back != "$promoted" ]] || fail "blade $to reports the dead instance as ready"
echo "   blade $other promoted pid $new; blade $to waits with pid $back"
echo "PASS"
