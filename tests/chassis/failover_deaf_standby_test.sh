#!/usr/bin/env bash
# A standby instance that stopped listening (issue #12, S21): blade 2's
# waiting instance closed its promotion pipe but still runs. A failover
# there loads the segment, then finds nobody to promote: writing to that
# pipe fails (EPIPE; before batond ignored SIGPIPE, the write killed blade
# 2's batond). The failover fails there and goes on to blade 3, where the
# application starts with the last durable batch; blade 2's batond lives.
#
# Needs BATONCTL and BATON_KV (meson passes them).
set -euo pipefail
source "$(dirname "$0")/failover_lib.sh"
fo_begin baton-fod 3

cat >"$dir/groups.toml" <<TOML
[[group]]
name = "kv"
segments = ["kv"]
start = "if [ \"\$BATON_ROLE\" = standby ]; then exec 3<&-; exec sleep 600; fi; exec $BATON_KV --socket \$BATON_SOCKET --name kv --batches 1000000 --every-ms 20 >$dir/kv-\$BATON_NODE-\$BATON_ASSIGNMENT.log 2>&1"
home = [1]
standby = [2]
standby_instances = true
start_timeout_ms = 5000
TOML
"$BATONCTL" chassis up --blades 3 --replicas 2 --dir "$chassis" --groups "$dir/groups.toml" >/dev/null ||
  fail "chassis up"

echo "1. kv runs on blade 1; blade 2's standby instance waits, deaf"
expect_at 1
home_log=$(ls "$dir"/kv-1-*.log)
for _ in $(seq 1 200); do (($(durable "$home_log") > 5)) && break; sleep 0.1; done
for _ in $(seq 1 200); do
  "$BATONCTL" groups --json --socket "$chassis/blade2.sock" | grep -q '"kv": *"ready' && break
  sleep 0.1
done
"$BATONCTL" groups --json --socket "$chassis/blade2.sock" | grep -q '"kv": *"ready' ||
  fail "blade 2's standby instance is not ready"
batond2=$(cat "$chassis/blade2.pid")

echo "2. kv is killed on blade 1: blade 2 cannot promote; kv goes on to blade 3"
pkill -KILL -f "baton-kv --socket $chassis/blade1.sock"
last=$(durable "$home_log")
expect_at 3 3
kill -0 "$batond2" 2>/dev/null || fail "blade 2's batond died promoting a deaf standby instance"
"$BATONCTL" events --socket "$chassis/blade2.sock" | grep -q "cannot promote the standby instance" ||
  fail "blade 2's events do not say it could not promote its standby instance"
log3=""
for _ in $(seq 1 100); do log3=$(ls "$dir"/kv-3-*.log 2>/dev/null | head -1); [[ -n $log3 ]] && grep -q "^restored generation" "$log3" && break; sleep 0.1; done
got=$(grep -o "^restored generation=[0-9]* batches=[0-9]*" "$log3" | sed 's/.*batches=//')
[[ -n $got ]] || fail "blade 3's instance did not restore the state"
((got >= last)) || fail "blade 3 resumed at batch $got; batch $last was durable"
echo "   blade 3 resumed at batch $got (last durable seen: $last); blade 2's batond (pid $batond2) lives"
echo "PASS"
