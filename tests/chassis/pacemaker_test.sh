#!/usr/bin/env bash
# The resource agent under a real single-node Pacemaker + Corosync on this
# machine (issue #12, item 7): Pacemaker starts the application through the
# agent; the application commits durable batches; it is SIGKILLed; the
# agent's monitor reports it gone, Pacemaker recovers it, and it resumes
# from its last durable batch (batond kept its segment, S3).
#
# Skipped (exit 77, with the reason) where corosync or pacemaker is not
# installed, or already runs here (a real cluster is not ours to touch).
# Pacemaker's CIB directory is set aside for the test and put back after.
# Needs BATONCTL, BATON_KV and OCF_AGENT (meson passes them).
set -euo pipefail
skip() { echo "SKIP: $*"; exit 77; }
command -v corosync >/dev/null && command -v pacemakerd >/dev/null ||
  skip "corosync and pacemaker are not installed (tools/setup.sh installs them)"
live() {  # a process by that name runs (zombies do not count)
  for p in $(pgrep -x "$1"); do [[ "$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -c1)" != Z ]] && return 0; done
  return 1
}
live corosync && skip "corosync already runs on this machine"
live pacemakerd && skip "pacemaker already runs on this machine"
[[ $(id -u) -eq 0 ]] || skip "needs root (Pacemaker runs agents as root)"

dir=$(mktemp -d /tmp/baton-pcmk-XXXXXX)
cib=/var/lib/pacemaker/cib
provider=/usr/lib/ocf/resource.d/baton-test
cleanup() {
  set +e
  [[ -n "${pcmk:-}" ]] && kill -TERM "$pcmk" 2>/dev/null
  for _ in $(seq 1 60); do live pacemakerd || break; sleep 0.5; done
  pkill -KILL -f /usr/lib/pacemaker/ 2>/dev/null
  [[ -n "${coro:-}" ]] && kill -TERM "$coro" 2>/dev/null
  for _ in $(seq 1 20); do live corosync || break; sleep 0.5; done
  for p in "$dir"/*.pid; do [[ -f $p ]] && kill -s KILL -- "-$(cat "$p")" 2>/dev/null; done
  "$BATONCTL" chassis down --dir "$dir/chassis" >/dev/null 2>&1
  rm -rf "$provider"
  if [[ -d "$dir/cib.saved" ]]; then rm -rf "$cib"; mv "$dir/cib.saved" "$cib"; fi
  rm -rf "$dir"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  crm_mon -1 2>&1 | head -30
  tail -n 20 "$dir/kv.log" 2>/dev/null
  exit 1
}
# Waits up to $2 half-seconds for crm_mon's one-shot view to show $1. The
# first view that shows it counts: the view may flap while the DC settles, so
# a second look could say otherwise. (Whole output read before matching: under
# pipefail, `crm_mon | grep -q` fails whenever grep quits before crm_mon has
# written its last line.)
wait_crm() {
  for _ in $(seq 1 "$2"); do
    grep -- "$1" >/dev/null <<<"$(crm_mon -1 2>/dev/null)" && return 0
    sleep 0.5
  done
  return 1
}

# Our own cluster: one node on the loopback, an empty CIB.
if [[ -d "$cib" ]]; then mv "$cib" "$dir/cib.saved"; fi
mkdir -p "$cib" /var/log/corosync /var/log/pacemaker
chown hacluster:haclient "$cib" 2>/dev/null || true
cat >"$dir/corosync.conf" <<EOF
totem {
  version: 2
  cluster_name: baton-test
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
    name: node1
    nodeid: 1
    ring0_addr: 127.0.0.1
  }
}
EOF
corosync -f -c "$dir/corosync.conf" >"$dir/corosync.log" 2>&1 &
coro=$!
pacemakerd -f >"$dir/pacemaker.log" 2>&1 &
pcmk=$!
wait_crm "Online: \[ node1 \]" 120 ||
  { tail -n 20 "$dir/corosync.log" "$dir/pacemaker.log"; skip "pacemaker did not come up here"; }
crm_attribute --type crm_config --name stonith-enabled --update false >/dev/null

# The chassis and the agent (as provider baton-test).
"$BATONCTL" chassis up --blades 3 --dir "$dir/chassis" >"$dir/up.log" 2>&1 || { cat "$dir/up.log"; fail "chassis up"; }
mkdir -p "$provider"
cp "$OCF_AGENT" "$provider/baton"
sock="$dir/chassis/blade1.sock"
cibadmin --create -o resources --xml-text "
<primitive id=\"kv\" class=\"ocf\" provider=\"baton-test\" type=\"baton\">
  <instance_attributes id=\"kv-ia\">
    <nvpair id=\"kv-segments\" name=\"segments\" value=\"pcmk-kv\"/>
    <nvpair id=\"kv-socket\" name=\"socket\" value=\"$sock\"/>
    <nvpair id=\"kv-batonctl\" name=\"batonctl\" value=\"$BATONCTL\"/>
    <nvpair id=\"kv-start\" name=\"start_cmd\" value=\"$BATON_KV --socket $sock --name pcmk-kv --batches 30 --hold &gt;&gt;$dir/kv.log 2&gt;&amp;1\"/>
    <nvpair id=\"kv-pidfile\" name=\"pidfile\" value=\"$dir/kv.pid\"/>
  </instance_attributes>
  <operations>
    <op id=\"kv-monitor\" name=\"monitor\" interval=\"1s\" timeout=\"20s\"/>
  </operations>
</primitive>" || fail "cibadmin"

# Pacemaker starts it; the application commits 30 durable batches.
for _ in $(seq 1 120); do grep -q "served 30 batches" "$dir/kv.log" 2>/dev/null && break; sleep 0.5; done
grep -q "served 30 batches" "$dir/kv.log" || fail "Pacemaker did not start the application"
# (The application may be done before the agent's start returns.)
wait_crm "kv.*Started node1" 60 || fail "crm_mon does not show kv started"
last=$(grep -o "^batch=[0-9]*" "$dir/kv.log" | tail -1 | cut -d= -f2)

# The application dies; Pacemaker's monitor notices and recovers it.
kill -s KILL -- "-$(cat "$dir/kv.pid")"
for _ in $(seq 1 120); do grep -q "restored generation" "$dir/kv.log" && break; sleep 0.5; done
grep -q "restored generation=.* batches=$last " "$dir/kv.log" ||
  fail "the recovered application did not resume at batch $last"
crm_mon -1 --include=failcounts 2>/dev/null || true  # for the log: the fail count of the kill
cibadmin --delete --xml-text '<primitive id="kv"/>' >/dev/null || fail "cibadmin delete"
for _ in $(seq 1 60); do [[ -f "$dir/kv.pid" ]] || break; sleep 0.5; done
[[ ! -f "$dir/kv.pid" ]] || fail "Pacemaker did not stop the application when the resource went"
echo "pacemaker: ok (started by Pacemaker, killed, recovered at batch $last)"
