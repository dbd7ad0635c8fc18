# Shared by the failover tests on real processes (failover_test.sh,
# failover_metric_test.sh, failover_partition_test.sh): a chassis directory
# cleaned up on exit, failures that show what every blade decided, and
# where group kv runs. Source it after `set -euo pipefail`; needs BATONCTL.

# fo_begin PREFIX BLADES: a fresh $dir (and $chassis in it) for BLADES blades,
# removed with the chassis and every baton-kv it ran on exit.
fo_begin() {
  dir=$(mktemp -d "/tmp/$1-XXXXXX")
  chassis=$dir/chassis
  fo_blades=$2
  trap fo_cleanup EXIT
}
fo_cleanup() {
  set +e
  "$BATONCTL" chassis heal --dir "$chassis" >/dev/null 2>&1
  "$BATONCTL" chassis down --dir "$chassis" >/dev/null 2>&1
  pkill -KILL -f "baton-kv --socket $chassis/" 2>/dev/null
  rm -rf "$dir"
}
# fail MESSAGE: says it, shows each blade's events about groups, views and
# ownership, and the tail of every instance's log; exits 1.
fail() {
  echo "FAIL: $*"
  local b f
  for b in $(seq 1 "$fo_blades"); do
    echo "--- blade $b"
    "$BATONCTL" events --socket "$chassis/blade$b.sock" 2>&1 | grep -i "group\|node . down\|view\|fenced\|ownership" | tail -12
  done
  for f in "$dir"/kv-*.log; do [[ -f $f ]] && { echo "--- $f"; tail -n 3 "$f"; }; done
  exit 1
}
# where BLADE: "node state" of group kv as BLADE reports the cluster.
where() {
  "$BATONCTL" groups --json --socket "$chassis/blade$1.sock" 2>/dev/null |
    python3 -c 'import json,sys; g=json.load(sys.stdin)["groups"][0]; print(g["node"], g["state"])'
}
# expect_at NODE [BLADE]: kv runs on NODE within 20 s, as BLADE (default 2) sees it.
expect_at() {
  local got
  for _ in $(seq 1 200); do
    got=$(where "${2:-2}" || true)
    [[ $got == "$1 running" ]] && return 0
    sleep 0.1
  done
  fail "kv is '$got', expected '$1 running'"
}
# durable LOG: the last batch LOG's instance was told is durable (0: none).
durable() { grep -o "^batch=[0-9]* generation=[0-9]* durable" "$1" | tail -1 | sed 's/batch=\([0-9]*\).*/\1/;s/^$/0/'; }
