#!/usr/bin/env bash
# Set up this machine for eucalab, idempotently, one printed line per step.
#
#   .ci/setup.sh         Debian packages, Open vSwitch running, .venv   (root; sudo if needed)
#   .ci/setup.sh venv    only .venv, for `make unit`                    (no root)
#
# Every step first checks whether it is needed, so a second run on a ready machine
# takes about a second. Any failure stops here with what went wrong and how to fix it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$ROOT/.ci/setup.sh"
cd "$ROOT"
MODE=${1:-all}

# The Debian packages eucalab needs, in one place:
#   mininet, openvswitch-switch   build the emulated network (OVS userspace datapath
#                                 where the kernel has no openvswitch module)
#   iproute2, iptables, ethtool   addresses, NAT and filtering on emulated hosts; tx
#                                 checksum offload off (TCP over the userspace datapath)
#   python3-nftables, nftables    the CC's routing rules, one nftables table loaded in
#                                 process (libnftables); nft to list them and to load
#                                 the border gateway's site firewall
#   iputils-ping, iputils-arping  reachability probes, gratuitous ARP on takeover
#   iperf3, curl, socat, tcpdump  traffic, HTTP and TCP probes, isolation checks (zero packets)
#   keepalived                    the VRRP failover baseline
#   procps, psmisc                ps/pgrep and fuser for the testbed's own cleanup
#   python3-venv, python3-pip     .venv made from /usr/bin/python3 (Debian's mininet)
#   qemu-system-x86, busybox-static, kmod
#                                 the kernel lane (eucalab vm): a VM with Debian's kernel where
#                                 this one lacks openvswitch, sch_netem or 8021q; modprobe, depmod
#   openssh-server, openssh-client, sudo
#                                 deployments over several servers (docs/cluster.md): Mininet's
#                                 cluster support reaches servers with ssh and runs commands with
#                                 sudo; the kernel-lane VM serves as a second server with sshd
#                                 (started by eucalab with keys of its own, never as a service)
PACKAGES="mininet openvswitch-switch iproute2 iptables python3-nftables nftables ethtool iputils-ping iputils-arping
iperf3 curl socat tcpdump keepalived procps psmisc python3-venv python3-pip qemu-system-x86 busybox-static kmod
openssh-server openssh-client sudo"

OVS_CTL=/usr/share/openvswitch/scripts/ovs-ctl
VENV=.venv
STAMP=$VENV/.eucalab-stamp
LOG_DIR=${TMPDIR:-/tmp}

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$1" >&2; [ -z "${2:-}" ] || printf 'setup: fix: %s\n' "$2" >&2; exit 1; }
show_log() { printf -- '--- last lines of %s ---\n' "$1" >&2; tail -n 30 "$1" >&2 || true; }

[ "$MODE" = all ] || [ "$MODE" = venv ] || die "unknown mode '$MODE'" "use: .ci/setup.sh [all|venv]"

if [ "$MODE" = all ] && [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        say "not root: re-running with sudo"
        exec sudo -E bash "$SELF" "$@"
    fi
    die "eucalab installs packages and builds networks, so set-up needs root, and there is no sudo here" \
        "run it as root: su -c 'make setup' (or make test / make run as root)"
fi

missing_packages() {
    # One dpkg-query for all; a package never seen by dpkg prints no line at all.
    local installed p
    # shellcheck disable=SC2086
    installed=$(dpkg-query -W -f='${Package} ${Status}\n' $PACKAGES 2>/dev/null \
        | awk '/ install ok installed$/ {print $1}' || true)
    for p in $PACKAGES; do
        printf '%s\n' "$installed" | grep -qx "$p" || printf ' %s' "$p"
    done
}

ovs_answers() {
    # ovsdb-server answers `show`; ovs-vswitchd must answer too, or adding a bridge hangs.
    timeout 5 ovs-vsctl --timeout=3 show >/dev/null 2>&1 \
        && timeout 5 ovs-appctl --timeout=3 -t ovs-vswitchd version >/dev/null 2>&1
}

if [ "$MODE" = all ]; then
    missing=$(missing_packages)
    if [ -n "$missing" ]; then
        log="$LOG_DIR/eucalab-apt.log"
        say "installing Debian packages:$missing (log: $log)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update >"$log" 2>&1 \
            || { show_log "$log"; die "apt-get update failed" \
                 "check network access to the Debian mirrors (/etc/apt/sources.list*), then run make setup again"; }
        # shellcheck disable=SC2086
        apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=120 $missing >>"$log" 2>&1 \
            || { show_log "$log"; die "apt-get install failed for:$missing" \
                 "run: apt-get install -y --no-install-recommends$missing ; then make setup again"; }
        still=$(missing_packages)
        [ -z "$still" ] || die "still not installed after apt-get install:$still" \
            "run: apt-get install -y --no-install-recommends$still"
    else
        say "Debian packages: all present"
    fi

    if ovs_answers; then
        say "Open vSwitch: running"
    else
        log="$LOG_DIR/eucalab-ovs-start.log"
        say "Open vSwitch: starting with ovs-ctl (no systemd here; log: $log)"
        [ -x "$OVS_CTL" ] || die "$OVS_CTL not found" "apt-get install -y --no-install-recommends openvswitch-switch"
        # Without the openvswitch kernel module ovs-ctl warns ("Kernel has no loadable
        # module support") and the userspace datapath is what works: not an error.
        "$OVS_CTL" start --system-id=random >"$log" 2>&1 \
            || { show_log "$log"; die "ovs-ctl start failed" \
                 "read $log; stale daemons can be stopped with $OVS_CTL stop, then make setup again"; }
        for _ in $(seq 1 50); do
            ovs_answers && break
            sleep 0.2
        done
        ovs_answers || { show_log "$log"; die "Open vSwitch started but does not answer ovs-vsctl show / ovs-appctl version" \
                         "$OVS_CTL restart --system-id=random, then make setup again"; }
        say "Open vSwitch: answering"
    fi
fi

venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null \
        && grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null
}

changed=0
if venv_ok; then
    say ".venv: present"
else
    if [ -e "$VENV" ]; then
        say ".venv: unusable or made without system site packages: recreating it"
        rm -rf "$VENV"
    fi
    say ".venv: creating from /usr/bin/python3 with system site packages (Debian's mininet stays visible)"
    [ -x /usr/bin/python3 ] || die "/usr/bin/python3 not found" "run make setup as root (installs python3-venv)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV" \
        || die "python3 -m venv failed" "apt-get install -y --no-install-recommends python3-venv (make setup as root does)"
    changed=1
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    log="$LOG_DIR/eucalab-pip.log"
    say ".venv: pip install -e . (pinned dependencies from pyproject.toml; log: $log)"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --no-input -e . >"$log" 2>&1 \
        || { show_log "$log"; die "pip install -e . failed" \
             "check network access to PyPI, then make setup again; make clean first if .venv is damaged"; }
    touch "$STAMP"
    changed=1
else
    say ".venv: eucalab installed and newer than pyproject.toml"
fi

# Started through sudo by a normal user: give them back what was just made, so that
# `make unit` and `make clean` work without root.
if [ "$changed" = 1 ] && [ -n "${SUDO_UID:-}" ] && [ "${SUDO_UID}" != 0 ]; then
    chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$VENV" ./*.egg-info 2>/dev/null || true
fi

# Cheap sanity check (no imports beyond mininet's package): the modules eucalab needs are found.
"$VENV/bin/python" - "$MODE" <<'EOF' || die ".venv cannot find the modules above" "make clean && make setup"
import importlib.util, sys
need = ["experiments", "os_ken", "aiohttp", "boto3", "yaml", "rich"]
if sys.argv[-1] != "venv":
    need.append("mininet.net")
lost = [m for m in need if importlib.util.find_spec(m) is None]
if lost:
    sys.exit("setup: not importable from .venv: " + ", ".join(lost))
EOF
say "ready"
