#!/bin/bash
# Runs as root inside tests/vm.sh's VM (Debian 12, systemd as PID 1, Debian's kernel, TCG
# emulation: everything 5-10x slower than the host, and the waits below are sized for that).
# /host holds bedside.deb and board.toml. Each check prints "ok" or "FAIL" with what it saw;
# the exit code is the number of failures.
set -u
export SYSTEMD_PAGER=
pass=0
failed=0
ok() { echo "ok   - $*"; pass=$((pass + 1)); }
bad() { echo "FAIL - $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
# until SECONDS COMMAND...: true once COMMAND succeeds, polled every 0.5 s; false past SECONDS.
until_true() { local end=$(($(date +%s) + $1)); shift
  while [ "$(date +%s)" -lt "$end" ]; do "$@" && return 0; sleep 0.5; done; return 1; }
el() { echo "$(( $(date +%s%N) / 1000000 - $1 )) ms"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
prop() { systemctl show -P "$1" bedside; }
journal() { journalctl -q -b -u bedside --no-pager -o cat; }

T=bedside/vm/vm-01
MQTT=/tmp/mqtt.log           # every message on bedside's topics: "topic payload" per line
STATUS=/tmp/status.json      # the retained status document as it is now
status_now() { timeout 10 mosquitto_sub -h 127.0.0.1 -t "$T/status" -C 1 -W 8 > "$STATUS" 2>/dev/null; }
# The camera's part of it: {"reason":…,"since":…,"source":…,"state":…}, keys in any order.
video() { grep -o '"video":{[^}]*}' "$STATUS"; }
video_state_is() { status_now && video | grep -q "\"state\":\"$1\""; }
streaming_in() { video_state_is streaming && video | grep -Eq "\"source\":\"[^\"]* $1 640x480 [^\"]*25.0 fps"; }
# The running process's start, as its status document says (the device's "since", before the
# video part): a retained document from the process before does not count.
since() { status_now && sed 's/"video":{[^}]*}//' "$STATUS" | grep -o '"since":"[^"]*"' | head -1; }
fresh_streaming_in() { [ "$(since)" != "$2" ] && streaming_in "$1"; }
findings() { grep -c "^$T/findings " "$MQTT" 2>/dev/null || true; }
more_findings_than() { [ "$(findings)" -gt "$1" ]; }
set_profile() { sed -i -e "s#^formats = .*#formats = [\"$1\"]#" -e "s#^device = .*#device = \"$2\"#" /etc/bedside/board.toml; }

echo "kernel $(uname -r); systemd $(systemctl --version | head -1 | cut -d' ' -f2): $(systemctl is-system-running); $(cut -d' ' -f1 /proc/uptime) s since boot"

# --- the kernel's virtual camera, the broker ---
t=$(now_ms); modprobe vivid n_devs=1 && udevadm settle
check "vivid loaded, /dev/video0 is a capture device ($(el "$t"))" \
  sh -c 'v4l2-ctl -d /dev/video0 --info | grep -q "Video Capture"'
systemctl is-active -q mosquitto || systemctl start mosquitto
check "mosquitto runs in the VM" until_true 30 systemctl is-active -q mosquitto
mosquitto_sub -h 127.0.0.1 -t "$T/#" -v > "$MQTT" 2>/dev/null &

# --- the package, as a site installs it ---
t=$(now_ms)
dpkg -i /host/bedside.deb > /tmp/dpkg.log 2>&1
check "dpkg -i bedside.deb ($(el "$t"))" sh -c 'dpkg -s bedside | grep -q "Status: install ok installed"'
check "the bedside system user" sh -c 'getent passwd bedside > /dev/null'
install -m 640 -g bedside /host/board.toml /etc/bedside/board.toml
check "bedside check passes on the VM's profile" sh -c 'bedside check --board /etc/bedside/board.toml > /tmp/check.log 2>&1'
mkdir -p /etc/systemd/system/bedside.service.d
bedside systemd-dropin --board /etc/bedside/board.toml > /etc/systemd/system/bedside.service.d/board.conf
# For the test only: the stall switch, and a watchdog and restart delay short enough to watch.
cat > /etc/systemd/system/bedside.service.d/zz-vm-test.conf <<'EOF'
[Service]
Environment=BEDSIDE_TEST_STALL_FILE=/var/lib/bedside/stall
WatchdogSec=10s
RestartSec=1s
EOF
systemctl daemon-reload

# --- Type=notify: `systemctl start` returns once the daemon said READY=1 ---
t=$(now_ms)
systemctl start bedside
took=$(el "$t")
check "Type=notify: start returned after READY ($took), unit active" systemctl is-active -q bedside
check "Type=notify: the daemon's STATUS= is shown ('$(prop StatusText)')" test -n "$(prop StatusText)"
check "the unit runs as bedside, not root" test "$(stat -c %U "/proc/$(prop MainPID)")" = bedside

# --- capture in each pixel format vivid and bedside share (vivid has no MJPEG) ---
for f in YUYV UYVY NV12 GREY; do
  set_profile "$f" /dev/video0
  s0=$(since)
  t=$(now_ms)
  systemctl restart bedside
  if until_true 90 fresh_streaming_in "$f" "$s0"; then
    n=$(findings)
    if until_true 60 more_findings_than "$n"; then
      ok "$f 640x480: streaming, and a finding arrived $(el "$t") after the restart"
    else
      bad "$f 640x480: streaming, but no finding within 60 s"
    fi
    fmt=$(v4l2-ctl -d /dev/video0 --get-fmt-video | tr -s ' \t' ' ' | grep -E "Width/Height|Pixel Format" | tr '\n' ';')
    parm=$(v4l2-ctl -d /dev/video0 --get-parm | grep -o '[0-9.]* (' | head -1)
    case "$fmt" in
      *"640/480"*"'$f'"*) ok "$f: the driver agrees ($fmt ${parm}fps)" ;;
      *) bad "$f: the driver reports $fmt" ;;
    esac
  else
    bad "$f 640x480: not streaming within 90 s: $(cat "$STATUS")"
    journal | tail -5
  fi
done
last=$(grep "^$T/findings " "$MQTT" | tail -1)
sha=$(sed -n 's/^sha256 = "\(.*\)"/\1/p' /usr/share/bedside/models/us-fast-fluid/model.toml)
check "a finding names its model: us-fast-fluid and its sha256" \
  sh -c "echo '$last' | grep -q '\"id\":\"us-fast-fluid\"' && echo '$last' | grep -q '$sha'"

# --- DeviceAllow=: only the profile's device gets through ---
# The drop-in allows /dev/video0; point the daemon at /dev/video1 (vivid's output node,
# which root opens freely) without regenerating it.
check "root opens /dev/video1 outside the unit" sh -c 'v4l2-ctl -d /dev/video1 --info > /dev/null'
set_profile YUYV /dev/video1
systemctl restart bedside
if until_true 60 video_state_is down && grep -q "Operation not permitted" "$STATUS"; then
  ok "DeviceAllow=: the unit cannot open /dev/video1 ($(grep -o '"reason":"[^"]*"' "$STATUS"))"
else
  bad "DeviceAllow=: /dev/video1 was not refused: $(cat "$STATUS")"
fi
set_profile YUYV /dev/video0
systemctl restart bedside
check "back on /dev/video0" until_true 90 streaming_in YUYV

# --- the device lost and regained: unplugged (unbound), module removed, module loaded ---
downs() { grep "^$T/status " "$MQTT" | grep -o '"video":{[^}]*}' | grep -c '"state":"down"'; }
lost0=$(downs)
echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind
if until_true 60 video_state_is down; then
  ok "device unbound: the status topic says $(video)"
else
  bad "device unbound: the status still says $(cat "$STATUS")"
fi
check "vivid unloads once bedside let go of the device" until_true 30 modprobe -r vivid
check "the daemon stays up without its camera" systemctl is-active -q bedside
modprobe vivid n_devs=1 && udevadm settle
t=$(now_ms)
if until_true 90 streaming_in YUYV; then
  ok "module loaded again: streaming again $(el "$t") later"
else
  bad "module loaded again: not streaming within 90 s: $(cat "$STATUS")"
fi
check "the 'down' state reached the broker's subscriber" test "$(downs)" -gt "$lost0"

# --- the watchdog: a stalled image worker stops the pings; systemd restarts the daemon ---
n0=$(prop NRestarts); pid0=$(prop MainPID); s0=$(since)
touch /var/lib/bedside/stall
restarted() { [ "$(prop NRestarts)" -gt "$n0" ] && systemctl is-active -q bedside; }
t=$(now_ms)
if until_true 90 restarted; then
  ok "watchdog: restarted $(el "$t") after the stall (WatchdogSec=10s; pid $pid0 -> $(prop MainPID))"
else
  bad "watchdog: no restart within 90 s (NRestarts $(prop NRestarts))"
fi
check "the journal says the watchdog fired" sh -c 'journalctl -q -b -u bedside --no-pager | grep -qi "watchdog timeout"'
check "the stall switch was taken (logged)" sh -c 'journalctl -q -b -u bedside --no-pager | grep -q "stalls now (test switch)"'
check "streaming again after the watchdog restart" until_true 90 fresh_streaming_in YUYV "$s0"

# --- Restart=on-failure after SIGKILL ---
n0=$(prop NRestarts); pid0=$(prop MainPID); s0=$(since)
systemctl kill -s KILL bedside
t=$(now_ms)
if until_true 60 restarted; then
  ok "SIGKILL: restarted $(el "$t") later (pid $pid0 -> $(prop MainPID))"
else
  bad "SIGKILL: no restart within 60 s"
fi
check "streaming again after SIGKILL" until_true 90 fresh_streaming_in YUYV "$s0"

# --- MemoryMax= from the profile, enforced by the kernel ---
want=$(( $(sed -n 's/^budget_mib = //p' /etc/bedside/board.toml) * 1024 * 1024 ))
cg=/sys/fs/cgroup$(systemctl show -P ControlGroup bedside)
check "MemoryMax=$(prop MemoryMax) is memory.budget_mib ($want) and the cgroup's memory.max" \
  test "$(prop MemoryMax)" = "$want" -a "$(cat "$cg/memory.max")" = "$want"
n0=$(prop NRestarts); s0=$(since)
# A process put in the unit's cgroup that grows without end (tail buffering a line that never
# ends): the kernel's OOM killer stops it at memory.max, and systemd (OOMPolicy=stop) takes the
# unit down and brings it back.
sh -c "echo \$\$ > $cg/cgroup.procs && exec tail /dev/zero" 2>/dev/null &
t=$(now_ms)
if until_true 90 restarted; then
  ok "MemoryMax: the grower was OOM-killed within the unit's limit and the unit came back $(el "$t") later"
else
  bad "MemoryMax: no OOM kill within 90 s (memory.events: $(tr '\n' ' ' < "$cg/memory.events" 2>/dev/null))"
fi
check "the journal says the unit failed with result 'oom-kill'" sh -c 'journalctl -q -b -u bedside --no-pager | grep -q "oom-kill"'
check "streaming again after the OOM kill" until_true 90 fresh_streaming_in YUYV "$s0"
check "the kernel's log names the kill in the unit's memory cgroup" \
  sh -c 'journalctl -q -k -b --no-pager | grep -q "Memory cgroup out of memory: Killed process [0-9]* (tail)"'

echo "--- journal (last lines)"
journal | tail -8
echo "--- $pass passed, $failed failed; NRestarts $(prop NRestarts); $(findings) findings and $(grep -c "^$T/status " "$MQTT") status documents at the VM's broker"
exit "$failed"
