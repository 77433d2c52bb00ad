"""``eucalab check --servers``: can these machines run one deployment together?

A deployment over several servers (docs/cluster.md) needs, on every server other than
this one: ssh as root without a password (BatchMode), the same Mininet (a version
mismatch leaves Mininet's remote side without bridges), the same eucalab commit at the
same path (the components run from it), a tunnel type both kernels can make (gretap, or
VXLAN where gretap is missing) and an MTU of at least 1500 on the path, so that
the tunnelled links' 1450 plus the outer headers fit. One ssh call per server asks all of
it; ``findings`` turns the answers into ``eucalab check`` lines (unit-tested without ssh).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Callable

from topologies.cluster import TUNNEL_KINDS, probe_command
from topologies.placement import TUNNEL_MTU

from .preflight import Finding
from .rundir import REPO_ROOT
from .versions import versions

# The tunnel's outer headers: IPv4 (20) + GRE with key (8) + Ethernet (14), or VXLAN's 50.
TUNNEL_OVERHEAD = 50
SSH_FIX = ("give this machine's root a key the server's root accepts (ssh-copy-id root@SERVER), "
           "and check `ssh -o BatchMode=yes root@SERVER true`")

# What a server reports about itself, as one JSON line (run with python3 over ssh).
_PROBE = """
import json, subprocess
def sh(c):
    p = subprocess.run(c, shell=True, capture_output=True, text=True)
    return p.returncode, p.stdout.strip()
out = {}
try:
    from mininet.net import VERSION
    out["mininet"] = VERSION
except ImportError:
    out["mininet"] = None
out["commit"] = sh("git -C %(repo)s rev-parse HEAD")[1] or None
route = sh("ip route get %(back)s")[1]
dev = route.split(" dev ")[1].split()[0] if " dev " in route else None
out["mtu"] = int(open("/sys/class/net/%%s/mtu" %% dev).read()) if dev else None
out["tunnels"] = [k for k, line in %(probes)r if sh(line)[0] == 0]
print(json.dumps(out))
"""


def local_address_towards(server: str) -> str | None:
    """This machine's source address on the route to ``server``."""
    route = subprocess.run(["ip", "route", "get", server], capture_output=True, text=True).stdout
    return route.split(" src ")[1].split()[0] if " src " in route else None


def probe_line(back: str) -> str:
    """The shell line a server runs to report on itself (``back``: this machine's address)."""
    code = _PROBE % {"repo": shlex.quote(str(REPO_ROOT)), "back": back,
                     "probes": [(k, probe_command(k)) for k in TUNNEL_KINDS]}
    # The server's own eucalab environment: the Python eucalab runs Mininet with there.
    return f"{shlex.quote(str(REPO_ROOT / '.venv' / 'bin' / 'python'))} -c {shlex.quote(code)}"


def findings(server: str, ssh: subprocess.CompletedProcess, local: dict) -> list[Finding]:
    """``eucalab check`` lines for one server from its ssh answer and this machine's ``local``
    facts (mininet, eucalab_commit, tunnels)."""
    # ssh itself exits 255; any other status is the probe's, run after logging in.
    if ssh.returncode in (255, 124):
        return [Finding(f"{server}: ssh", False, (ssh.stderr or "no answer").strip()[-200:], SSH_FIX)]
    out = [Finding(f"{server}: ssh", True, "root, no password")]
    try:
        if ssh.returncode != 0:
            raise ValueError
        got = json.loads(ssh.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return out + [Finding(f"{server}: eucalab", False,
                              f"no answer from its .venv: {(ssh.stdout + ssh.stderr).strip()[-200:]!r}",
                              f"check out eucalab at {REPO_ROOT} there and run make setup")]
    same = got.get("mininet") == local["mininet"]
    out.append(Finding(f"{server}: mininet", same, f"{got.get('mininet')} (here {local['mininet']})",
                       f"install Mininet {local['mininet']} there (apt-get install mininet on the same "
                       "Debian release)"))
    same = got.get("commit") == local["eucalab_commit"]
    out.append(Finding(f"{server}: eucalab", same, f"commit {got.get('commit')} at {REPO_ROOT} "
                       f"(here {local['eucalab_commit']})",
                       f"check out commit {local['eucalab_commit']} at {REPO_ROOT} there and run make setup"))
    kinds = [k for k in TUNNEL_KINDS if k in got.get("tunnels", []) and k in local["tunnels"]]
    out.append(Finding(f"{server}: tunnel", bool(kinds), kinds[0] if kinds else
                       f"none in common (there {got.get('tunnels')}, here {local['tunnels']})",
                       "load ip_gre (gretap) or vxlan on both machines: modprobe -a ip_gre vxlan"))
    mtu = got.get("mtu")
    need = TUNNEL_MTU + TUNNEL_OVERHEAD
    out.append(Finding(f"{server}: MTU", bool(mtu and mtu >= need),
                       f"{mtu} on the path back (tunnelled links use {TUNNEL_MTU} + {TUNNEL_OVERHEAD})",
                       f"raise the MTU of the interface between the servers to at least {need}"))
    return out


def local_tunnels(run: Callable[[str], int]) -> list[str]:
    """The tunnel types this machine's kernel makes (``run`` runs a shell line, returns its status)."""
    return [k for k in TUNNEL_KINDS if run(probe_command(k)) == 0]


def check_servers(servers: list[str], ssh_config: str | None = None) -> list[Finding]:
    """Ask every server but this one (the first, localhost) over ssh; the findings."""
    here = versions()
    local = {"mininet": here["mininet"], "eucalab_commit": here["eucalab_commit"],
             "tunnels": local_tunnels(lambda line: subprocess.run(["sh", "-c", line],
                                                                  capture_output=True).returncode)}
    out: list[Finding] = []
    for server in servers[1:]:
        back = local_address_towards(server)
        if back is None:
            out.append(Finding(f"{server}: route", False, "no route from this machine",
                               "connect the machines (docs/cluster.md)"))
            continue
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"] + \
            (["-F", ssh_config] if ssh_config else []) + [f"root@{server}", probe_line(back)]
        try:
            proc = subprocess.run(ssh, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            proc = subprocess.CompletedProcess(ssh, 124, "", "no answer within 120 s")
        out += findings(server, proc, local)
    return out

