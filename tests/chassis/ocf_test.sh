#!/usr/bin/env bash
# The Pacemaker resource agent (tools/ocf/baton) against a real chassis of
# batond blades and a real application (baton-kv):
#   1. ocf-tester (Debian's resource-agents) runs every action and checks
#      the OCF exit codes;
#   2. a failover as Pacemaker would drive it: start on blade 1, the
#      application commits 20 durable batches, stop, start on blade 2: the
#      agent takes the segment over there and the application resumes
#      from the last durable batch;
#   3. validate-all refuses a bad configuration with OCF_ERR_CONFIGURED.
# Needs BATONCTL, BATON_KV and OCF_AGENT (meson passes them).
set -euo pipefail
if ! command -v ocf-tester >/dev/null; then
  echo "SKIP: ocf-tester is not installed (Debian package resource-agents; tools/setup.sh installs it)"
  exit 77
fi
dir=$(mktemp -d /tmp/baton-ocf-XXXXXX)
cleanup() {
  for p in "$dir"/*.pid; do [[ -f $p ]] && kill -s KILL -- "-$(cat "$p")" 2>/dev/null || true; done
  "$BATONCTL" chassis down --dir "$dir/chassis" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT; [[ -n "${KEEP:-}" ]] && trap - EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$BATONCTL" chassis up --blades 3 --dir "$dir/chassis" >"$dir/up.log" 2>&1 || { cat "$dir/up.log"; fail "chassis up"; }
sock() { echo "$dir/chassis/blade$1.sock"; }
kv_cmd() { echo "$BATON_KV --socket $(sock "$1") --name ocf-kv --batches $2 --hold >>$dir/$3.log 2>&1"; }

# 1. The OCF API, action by action.
ocf-tester -n baton-test \
  -o segments=ocf-kv -o socket="$(sock 1)" -o batonctl="$BATONCTL" \
  -o start_cmd="$(kv_cmd 1 5 tester-kv)" -o pidfile="$dir/tester.pid" \
  "$OCF_AGENT" >"$dir/tester.log" 2>&1 || { cat "$dir/tester.log"; fail "ocf-tester"; }
grep -q "passed all tests" "$dir/tester.log" || { cat "$dir/tester.log"; fail "ocf-tester did not pass"; }

# 2. A failover, driven the way Pacemaker drives it.
export OCF_ROOT=/usr/lib/ocf OCF_RESOURCE_INSTANCE=baton-failover OCF_RESKEY_segments=ocf-kv \
  OCF_RESKEY_batonctl="$BATONCTL"
agent() {  # agent BLADE ACTION BATCHES
  OCF_RESKEY_socket=$(sock "$1") OCF_RESKEY_pidfile="$dir/blade$1.pid" \
    OCF_RESKEY_start_cmd="$(kv_cmd "$1" "$3" "kv$1")" "$OCF_AGENT" "$2"
}
rc=0; agent 1 monitor 20 || rc=$?
[[ $rc -eq 7 ]] || fail "monitor before start: $rc, expected 7 (OCF_NOT_RUNNING)"
agent 1 start 20 || fail "start on blade 1"
# The application commits 20 more batches, each durable, then holds.
for _ in $(seq 1 300); do grep -q "served 20 batches" "$dir/kv1.log" 2>/dev/null && break; sleep 0.1; done
grep -q "served 20 batches" "$dir/kv1.log" || { cat "$dir/kv1.log"; fail "the application did not finish its batches"; }
last=$(grep -o "^batch=[0-9]*" "$dir/kv1.log" | tail -1 | cut -d= -f2)
agent 1 stop 20 || fail "stop on blade 1"
rc=0; agent 1 monitor 20 || rc=$?
[[ $rc -eq 7 ]] || fail "monitor after stop: $rc, expected 7"
agent 2 start 0 || fail "start on blade 2"
for _ in $(seq 1 100); do grep -q "restored" "$dir/kv2.log" 2>/dev/null && break; sleep 0.1; done
grep -q "restored generation=.* batches=$last " "$dir/kv2.log" ||
  { cat "$dir/kv1.log" "$dir/kv2.log"; fail "blade 2 did not resume at batch $last, the last durable one on blade 1"; }
"$BATONCTL" segments --socket "$(sock 2)" | grep "^ocf-kv .* held" >/dev/null || fail "blade 2 does not hold the segment"
agent 2 stop 0 || fail "stop on blade 2"

# 3. Configuration errors.
rc=0; OCF_RESKEY_segments="bad name" "$OCF_AGENT" validate-all 2>/dev/null || rc=$?
[[ $rc -eq 6 ]] || fail "validate-all with a bad name: $rc, expected 6 (OCF_ERR_CONFIGURED)"
rc=0; OCF_RESKEY_segments=ocf-kv OCF_RESKEY_start_cmd=true OCF_RESKEY_batonctl=/nonexistent \
  "$OCF_AGENT" validate-all 2>/dev/null || rc=$?
[[ $rc -eq 5 ]] || fail "validate-all without batonctl: $rc, expected 5 (OCF_ERR_INSTALLED)"
echo "ocf: ok (ocf-tester passed; a failover from blade 1 to blade 2 resumed at batch $last)"
