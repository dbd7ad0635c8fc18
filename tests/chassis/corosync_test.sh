#!/usr/bin/env bash
# Membership from a real Corosync (issue #12, item 8): a 3-blade chassis
# whose views come from a CPG process group and votequorum on this host's
# corosync, while the backplane heartbeats stay the failure detector.
#
#  1. Every blade joins the group (corosync-cpgtool lists three batonds) and
#     holds the view {1,2,3}, quorate; an application commits durably.
#  2. corosync stops: every blade is alone and without quorum although the
#     backplane still hears the others, and a new segment is refused.
#  3. corosync is back: the blades join again by themselves, the view is
#     whole and quorate again, and the segment committed before resumes.
#  4. A blade's batond is SIGKILLed: it leaves the group and the views.
#
# Skipped (exit 77, with the reason) where corosync is not installed or
# already runs here (a real cluster is not ours to touch), or without root.
# Needs BATONCTL and BATON_KV (meson passes them).
set -euo pipefail
skip() { echo "SKIP: $*"; exit 77; }
command -v corosync >/dev/null || skip "corosync is not installed (tools/setup.sh installs it)"
live() {  # a process by that name runs (zombies do not count)
  for p in $(pgrep -x "$1"); do [[ "$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -c1)" != Z ]] && return 0; done
  return 1
}
live corosync && skip "corosync already runs on this machine"
[[ $(id -u) -eq 0 ]] || skip "needs root (corosync)"

dir=$(mktemp -d /tmp/baton-coro-XXXXXX)
chassis=$dir/chassis
cleanup() {
  set +e
  "$BATONCTL" chassis down --dir "$chassis" >/dev/null 2>&1
  [[ -n "${coro:-}" ]] && kill -TERM "$coro" 2>/dev/null
  for _ in $(seq 1 20); do live corosync || break; sleep 0.5; done
  pkill -KILL -x corosync 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for b in 1 2 3; do
    echo "--- blade $b"
    "$BATONCTL" events --socket "$chassis/blade$b.sock" 2>&1 | tail -8
  done
  tail -n 5 "$dir/corosync.log"
  exit 1
}

cat >"$dir/corosync.conf" <<CONF
totem {
  version: 2
  cluster_name: baton-membership-test
  crypto_cipher: none
  crypto_hash: none
}
logging {
  to_stderr: yes
  to_syslog: no
}
quorum {
  provider: corosync_votequorum
}
nodelist {
  node {
    name: host1
    nodeid: 1
    ring0_addr: 127.0.0.1
  }
}
CONF
start_corosync() {
  corosync -f -c "$dir/corosync.conf" >>"$dir/corosync.log" 2>&1 &
  coro=$!
  for _ in $(seq 1 60); do corosync-quorumtool -s 2>/dev/null | grep "Quorate: *Yes" >/dev/null && return 0; sleep 0.25; done
  tail -n 20 "$dir/corosync.log"
  skip "corosync did not come up here"
}
stop_corosync() {
  kill -TERM "$coro"
  for _ in $(seq 1 40); do live corosync || break; sleep 0.25; done
  ! live corosync || fail "corosync did not stop"
  wait "$coro" 2>/dev/null || true
  coro=
}
# view BLADE: "members quorate" from the blade's status, e.g. "1,2,3 true".
view() {
  "$BATONCTL" status --json --socket "$chassis/blade$1.sock" 2>/dev/null |
    python3 -c 'import json,sys; v=json.load(sys.stdin)["view"]; assert v["source"] == "corosync"; print(",".join(map(str,v["members"])), str(v["quorate"]).lower())'
}
# expect_view WHAT BLADE... : every blade's view becomes WHAT within 15 s.
expect_view() {
  local want=$1 b got
  shift
  for b in "$@"; do
    for _ in $(seq 1 150); do
      got=$(view "$b" || true)
      [[ $got == "$want" ]] && break
      sleep 0.1
    done
    [[ $got == "$want" ]] || fail "blade $b's view is '$got', expected '$want'"
  done
}
expect_alone() {
  local b
  for b in "$@"; do expect_view "$b false" "$b"; done
}

start_corosync
if ! "$BATONCTL" chassis up --blades 3 --replicas 2 --membership corosync --dir "$chassis" >"$dir/up.log" 2>&1; then
  grep -q "needs a build with libcpg" "$dir/up.log" && skip "batond was built without libcpg and libvotequorum"
  cat "$dir/up.log"
  fail "chassis up"
fi

echo "1. three blades in the group, quorate"
expect_view "1,2,3 true" 1 2 3
# Corosync's own list of the group: every blade's batond, by pid.
pids=$(corosync-cpgtool -e 2>/dev/null | awk -v g="baton:$chassis" '$0 == g {on = 1; next} /^[^\t]/ {on = 0} on {print $1}')
for b in 1 2 3; do
  grep -qx "$(cat "$chassis/blade$b.pid")" <<<"$pids" || { corosync-cpgtool -e; fail "blade $b's batond is not in the group"; }
done
"$BATONCTL" events --socket "$chassis/blade1.sock" | grep "corosync: joined process group baton:$chassis as node 1" >/dev/null ||
  fail "blade 1 did not report joining the group"
"$BATON_KV" --socket "$chassis/blade1.sock" --name kv --batches 3 >"$dir/kv1.log" 2>&1 ||
  { cat "$dir/kv1.log"; fail "the application could not commit in a quorate view"; }

echo "2. corosync stops: alone and without quorum"
stop_corosync
expect_alone 1 2 3
"$BATONCTL" status --json --socket "$chassis/blade1.sock" |
  python3 -c 'import json,sys; l=json.load(sys.stdin)["links"]; sys.exit(0 if l and all(x["alive"] for x in l) else 1)' ||
  fail "the backplane should still hear every blade"
"$BATONCTL" events --socket "$chassis/blade2.sock" | grep "corosync: connection lost" >/dev/null ||
  fail "blade 2 did not report losing corosync"
if "$BATON_KV" --socket "$chassis/blade2.sock" --name fresh --batches 1 >"$dir/kv2.log" 2>&1; then
  cat "$dir/kv2.log"
  fail "a new segment was created without quorum"
fi
grep -qi "quorum" "$dir/kv2.log" || { cat "$dir/kv2.log"; fail "the refusal does not say why"; }

echo "3. corosync is back: the blades join again"
start_corosync
expect_view "1,2,3 true" 1 2 3
"$BATON_KV" --socket "$chassis/blade1.sock" --name kv --batches 2 >"$dir/kv3.log" 2>&1 ||
  { cat "$dir/kv3.log"; fail "the application could not go on"; }
grep -q "batch=5 generation=" "$dir/kv3.log" || { cat "$dir/kv3.log"; fail "the application did not resume at batch 3"; }

# Corosync's outage and return never stalled the heartbeats (the Corosync
# calls run on a thread of their own, not the control thread's).
for b in 1 2 3; do
  if "$BATONCTL" events --socket "$chassis/blade$b.sock" | grep "down (silent" >/dev/null; then
    fail "blade $b saw a peer fall silent while corosync went and came back"
  fi
done

echo "4. blade 3's batond is killed: it leaves the group and the views"
kill -KILL "$(cat "$chassis/blade3.pid")"
expect_view "1,2 true" 1 2
echo "PASS"
