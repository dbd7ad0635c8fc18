#!/usr/bin/env bash
# A partition during a failover makes no second owner (issue #12): a
# 4-blade af_packet chassis runs service group kv on blade 1; blade 1 is cut
# off from the others (nftables). The majority's coordinator moves the group
# to another node, which takes the segment over under a new owner epoch.
# Blade 1's instance runs on, cut off: nothing it commits may be
# acknowledged durable past what the new instance restored. After the heal,
# exactly one instance runs and it keeps committing.
#
# Skipped (exit 77, with the reason) where network namespaces cannot be made.
# Needs BATONCTL and BATON_KV (meson passes them).
set -euo pipefail
skip() { echo "SKIP: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root (network namespaces)"
probe="baton-probe-$$"
ip netns add "$probe" 2>/dev/null || skip "network namespaces cannot be created here"
ip netns del "$probe"
command -v nft >/dev/null || skip "nftables is not installed (tools/setup.sh installs it)"

source "$(dirname "$0")/failover_lib.sh"
fo_begin baton-fop 4

cat >"$dir/groups.toml" <<TOML
[[group]]
name = "kv"
segments = ["kv"]
start = "exec $BATON_KV --socket \$BATON_SOCKET --name kv --batches 1000000 --every-ms 20 >$dir/kv-\$BATON_NODE-\$BATON_ASSIGNMENT.log 2>&1"
home = [1]
start_timeout_ms = 15000
TOML
"$BATONCTL" chassis up --blades 4 --replicas 2 --transport af_packet --dir "$chassis" \
  --groups "$dir/groups.toml" --spares 3,4 >/dev/null || fail "chassis up"

expect_at 1
old=$(ls "$dir"/kv-1-*.log | head -1)
for _ in $(seq 1 200); do (($(durable "$old") >= 20)) && break; sleep 0.1; done
(($(durable "$old") >= 20)) || fail "kv on blade 1 did not commit"

echo "1. blade 1 is cut off from every other blade"
"$BATONCTL" chassis fault --dir "$chassis" --blade 1 >/dev/null
cut_at=$(durable "$old")
new=
for _ in $(seq 1 300); do
  w=$(where 2 || true)
  if [[ $w == *" running" && $w != "1 running" ]]; then
    new=$(ls -t "$dir"/kv-"${w%% *}"-*.log 2>/dev/null | head -1)
    [[ -n $new ]] && grep -q "^restored" "$new" && break
  fi
  sleep 0.1
done
[[ -n $new ]] && grep -q "^restored" "$new" || fail "the majority did not fail kv over"
restored=$(grep -o "^restored generation=[0-9]* batches=[0-9]*" "$new" | sed 's/.*batches=//')
echo "   the majority moved it: $(basename "$new") restored batch $restored (blade 1 had batch $cut_at durable when cut)"
((restored >= cut_at)) || fail "restored batch $restored, but batch $cut_at was durable before the cut"
# Blade 1's instance keeps trying, cut off, for a while.
sleep 3

echo "2. heal: blade 1 learns it lost the group"
"$BATONCTL" chassis heal --dir "$chassis" >/dev/null
for _ in $(seq 1 150); do
  (($(pgrep -fc "baton-kv --socket $chassis/" || true) == 1)) && break
  sleep 0.1
done
n=$(pgrep -fc "baton-kv --socket $chassis/" || true)
((n == 1)) || fail "$n instances of kv run after the heal"
last_old=$(durable "$old")
echo "   blade 1's instance was told durable up to batch $last_old; the new one restored $restored"
((last_old <= restored)) || fail "blade 1's instance was told batch $last_old is durable, but the new owner restored $restored: a second owner"
before=$(durable "$new")
for _ in $(seq 1 100); do (($(durable "$new") > before)) && break; sleep 0.1; done
(($(durable "$new") > before)) || fail "the new instance does not commit after the heal"
echo "PASS"
