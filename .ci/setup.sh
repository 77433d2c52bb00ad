#!/usr/bin/env bash
# Set up this machine for eucalab, idempotently: Debian packages, Open vSwitch
# running, and the project's virtualenv. A second run on a ready machine takes
# seconds: every step first checks whether it is needed.
set -euo pipefail

cd "$(dirname "$0")/.."

# Debian packages the project uses (Mininet and OVS build the network; the iputils,
# ethtool, iperf3, tcpdump, curl and iptables tools are used on emulated hosts;
# keepalived is the failover baseline).
PACKAGES="mininet openvswitch-switch iputils-ping iputils-arping ethtool iperf3 tcpdump
python3-venv python3-pip curl iproute2 iptables procps psmisc keepalived"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        say "not root: re-running with sudo"
        exec sudo -E "$0" "$@"
    fi
    die "eucalab builds networks and needs root; run this as root (no sudo found)"
fi

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in *"install ok installed"*) ;; *) missing="$missing $p" ;; esac
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null \
        || die "apt-get install failed for:$missing"
else
    say "Debian packages present"
fi

if timeout 5 ovs-vsctl --timeout=3 show >/dev/null 2>&1; then
    say "Open vSwitch running"
else
    say "starting Open vSwitch"
    # No systemd here: ovs-ctl starts ovsdb-server and ovs-vswitchd. Without the
    # kernel module it warns and the userspace datapath is what works.
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >/tmp/eucalab-ovs-start.log 2>&1 \
        || { cat /tmp/eucalab-ovs-start.log >&2; die "Open vSwitch did not start"; }
    for _ in $(seq 1 50); do
        timeout 5 ovs-vsctl --timeout=3 show >/dev/null 2>&1 && break
        sleep 0.2
    done
    timeout 5 ovs-vsctl --timeout=3 show >/dev/null 2>&1 || die "Open vSwitch does not answer"
fi

STAMP=.venv/.eucalab-stamp
if [ ! -x .venv/bin/python ]; then
    say "creating .venv (system site packages: Debian's mininet stays visible)"
    /usr/bin/python3 -m venv --system-site-packages .venv || die "python3 -m venv failed"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    say "installing eucalab and its pinned dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e . || die "pip install failed"
    touch "$STAMP"
else
    say ".venv up to date"
fi
.venv/bin/python -c "import mininet.net, os_ken, aiohttp, boto3" \
    || die ".venv is broken: remove it (make clean) and run make setup again"
say "ready"
