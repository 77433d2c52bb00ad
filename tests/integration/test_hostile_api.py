"""Hostile users and tenants on the real network: what the site's firewall and the CC let through.

From the ``user`` host and from an instance of another account, every internal port is
tried with real packets: UDP 7800 (forged heartbeats, the exact ones that once demoted
both CLCs), the SC's block port 3260 and its API, the CC's and NC's internal APIs,
every member's own address, the heartbeat links. None may arrive: an nftables counter
in the target host's input hook, after every filter on the way (the gateway's, the
CC's, the host's own), counts what its sockets would get, and must stay at 0, while
the public VIPs' 8773 answers and counts its packets. With and without the SDN controller. Then another account's image: refused.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys

import pytest
from botocore.exceptions import ClientError

from components.common.ha_config import HEARTBEAT_PORT
from experiments.testbed.deployment import Deployment, wait_until
from tests.support.clc_client import create_account, upload_image
from topologies.spec import DeploymentSpec, HeartbeatSpec

PROBE = "eucalab-probe"  # a table of this test's own in each target host
HEARTBEAT = {"pair": "clc", "member": "clc2", "boot": 999, "seq": 1, "state": "DISABLED", "epoch": 1000000,
             "last_seq": 0}


@pytest.fixture(scope="module", params=[True, False], ids=["sdn", "standalone"])
def cloud(request, tmp_path_factory):
    spec = DeploymentSpec(name="test-hostile", sdn=request.param,
                          heartbeat=HeartbeatSpec(interval_ms=100, misses=5))
    with Deployment(spec, run_dir=tmp_path_factory.mktemp("hostile")) as dep:
        dep.start_services()
        ep = dep.plan.endpoints()
        clc, walrus = ep["clc"].split("/services/")[0], ep["walrus"].split("/services/")[0]
        with dep.in_host("user"):
            admin = (dep.credentials.access_key, dep.credentials.secret_key)
            bob = create_account(clc, "bob", *admin)
            alice = create_account(clc, "alice", *admin)
            location = upload_image(walrus, "bob-images/tenant.img", *bob[1:], body=os.urandom(2**20))
            upload_image(walrus, "alice-images/private.img", *alice[1:])
        ec2 = dep.aws_client("ec2", access_key=bob[1], secret_key=bob[2])
        emi = ec2.register_image(ImageLocation=location, Name="tenant")["ImageId"]
        iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1,
                                Placement={"AvailabilityZone": "cluster1"})["Instances"][0]["InstanceId"]

        def running():
            inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
            return inst if inst["State"]["Name"] == "running" else None
        inst = wait_until(running, 60, 0.2)
        assert inst, "the tenant's instance did not start"
        slot = next(h.name for h in dep.plan.hosts_by_role("slot")
                    if f"inet {inst['PrivateIpAddress']}/" in dep[h.name].cmd("ip -o -4 addr show"))
        yield {"dep": dep, "ec2": ec2, "bob": bob, "alice": alice, "instance": inst, "slot": slot}


# -- what arrives where ----------------------------------------------------------------------------

def _count(dep, targets: list[tuple[str, str, int, list[str]]], src: str) -> None:
    """Count, from now on, what ``src`` sends to each target (address, protocol, port, hosts)
    and reaches its hosts: one counter per target and host, told apart by a comment."""
    rules: dict[str, list[str]] = {}
    for n, (daddr, proto, port, hosts) in enumerate(targets):
        for h in hosts:
            rules.setdefault(h, []).append(f'add rule ip {PROBE} seen ip saddr {src} ip daddr {daddr} '
                                           f'{proto} dport {port} counter comment "t{n}"')
    for h, lines in rules.items():
        # The input hook after every filter of the host (priority 100): what got past the
        # site's firewall, the CC's rules and the host's own, so what its sockets would get.
        body = "\n".join(lines)
        out = dep[h].cmd(f"nft -f - <<'EOF'\ntable ip {PROBE} {{\n  chain seen {{ type filter hook input "
                         f"priority 100; policy accept; }}\n}}\nflush chain ip {PROBE} seen\n{body}\nEOF")
        assert not out.strip(), out


def _arrived(dep, targets: list[tuple[str, str, int, list[str]]]) -> list[int]:
    """Per target, the packets counted on its hosts since ``_count``."""
    totals = [0] * len(targets)
    for h in sorted({h for *_, hosts in targets for h in hosts}):
        for line in dep[h].cmd(f"nft list chain ip {PROBE} seen").splitlines():
            found = re.search(r'counter packets (\d+) .*comment "t(\d+)"', line)
            if found:
                totals[int(found.group(2))] += int(found.group(1))
    return totals


def _attempt_command(daddr: str, proto: str, port: int) -> str:
    """A shell command that tries ``daddr`` ``proto``/``port`` once and prints the answer:
    ``sent`` for three forged heartbeats, else curl's HTTP status (000: no answer in 1 s)."""
    if proto == "udp":  # three forged heartbeats, numbered as a live member's would be
        code = (f"import json, socket\nhb = json.loads({json.dumps(HEARTBEAT)!r})\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "for n in range(3):\n    hb['seq'] = n + 1\n"
                f"    s.sendto(json.dumps(hb).encode(), ({daddr!r}, {port}))\n"
                "print('sent')\n")
        return f"python3 -c {shlex.quote(code)} 2>&1"
    return f"curl -s -o /dev/null -m 1 -w '%{{http_code}}' http://{daddr}:{port}/"


def _attempt(dep, src_host: str, daddr: str, proto: str, port: int) -> str:
    return dep[src_host].cmd(_attempt_command(daddr, proto, port)).strip()


def _attempt_all(dep, src_host: str, targets: list[tuple[str, str, int, list[str]]]) -> list[str]:
    """Every target tried at once from ``src_host`` (each a process of its own, as
    ``_attempt`` would run it); the answers in the targets' order. Trying them one after
    another waits out curl's 1 s timeout once per blocked port."""
    tries = " ".join(f"( printf '%s %s\\n' {n} \"$({_attempt_command(daddr, proto, port)})\" ) &"
                     for n, (daddr, proto, port, _) in enumerate(targets))
    out = dep[src_host].cmd(f"bash -c {shlex.quote(tries + ' wait')}")
    answers: dict[int, str] = {}
    for line in out.splitlines():
        n, _, answer = line.strip().partition(" ")
        if n.isdigit():
            answers[int(n)] = answer.strip()
    return [answers.get(n, f"no answer line: {out!r}") for n in range(len(targets))]


def _internal_targets(dep) -> list[tuple[str, str, int, list[str]]]:
    """(address, protocol, port, hosts that would receive it): every internal service."""
    plan = dep.plan
    out = []
    for pair in plan.pairs:
        members = pair.members
        out.append((pair.vip, "udp", HEARTBEAT_PORT, members))  # heartbeats at the service address
        if pair.kind in ("cc", "sc"):
            out.append((pair.vip, "tcp", pair.port, members))  # their APIs are internal
        if pair.kind == "sc":
            out.append((pair.vip, "tcp", 3260, members))
        for m in members:
            own = plan.hosts[m].ip_on("cloud")
            out.append((own, "tcp", pair.port, [m]))  # a member's own address
            out.append((own, "udp", HEARTBEAT_PORT, [m]))
            if pair.heartbeat_network:
                out.append((plan.hosts[m].ip_on(pair.heartbeat_network), "udp", HEARTBEAT_PORT, [m]))
            if pair.kind in ("cc", "sc"):
                out.append((plan.hosts[m].ip_on(f"priv{pair.cluster}"), "tcp", 3260 if pair.kind == "sc" else 8774,
                            [m]))
    for nc in plan.hosts_by_role("nc"):
        out.append((nc.main_ip, "tcp", 8775, [nc.name]))
    return out


def _states(dep) -> dict:
    return {m: dep.member_state(m) for p in dep.plan.pairs for m in p.members}


def _assert_only_public(dep, src_host: str, src_ip: str, extra: list[tuple[str, str, int, list[str]]] = ()):
    before = _states(dep)
    targets = _internal_targets(dep) + list(extra)
    _count(dep, targets, src_ip)
    answers = _attempt_all(dep, src_host, targets)
    # Every attempt has ended (curl gives up after 1 s): what arrived is counted.
    leaked = [(daddr, proto, port, answer) for (daddr, proto, port, _), answer, arrived
              in zip(targets, answers, _arrived(dep, targets)) if arrived or answer not in ("000", "sent")]
    assert leaked == [], f"reached from {src_host}: {leaked}"
    # The forged heartbeats changed nobody's state (none arrived).
    assert _states(dep) == before
    # ... while the public services answer, and their packets do arrive.
    for pair in (dep.plan.pair("clc"), dep.plan.pair("walrus")):
        public = [(pair.vip, "tcp", pair.port, pair.members)]
        _count(dep, public, src_ip)
        assert _attempt(dep, src_host, pair.vip, "tcp", pair.port) not in ("000", ""), pair.vip
        assert _arrived(dep, public)[0] > 0


def test_users_reach_only_the_public_vips(cloud):
    dep = cloud["dep"]
    _assert_only_public(dep, "user", dep.plan.hosts["user"].main_ip)
    # A ping to any service's VIP answers (experiments measure users' round trips with it).
    for pair in dep.plan.pairs:
        out = dep["user"].cmd(f"ping -n -c 2 -i 0.2 -W 1 {pair.vip}")
        assert " 0% packet loss" in out, out


def test_a_tenants_instance_reaches_only_the_public_vips(cloud):
    dep, slot, ip = cloud["dep"], cloud["slot"], cloud["instance"]["PrivateIpAddress"]
    gateway = dep[slot].cmd("ip route show default").split()[2]  # its group's gateway, on the primary CC
    cc = dep.plan.pair("cc", 1)
    _assert_only_public(dep, slot, ip, extra=[(gateway, "tcp", 8774, cc.members),
                                              (gateway, "udp", HEARTBEAT_PORT, cc.members)])
    # The metadata service (DNATed by the CC to the CLC's VIP) still answers it.
    assert dep[slot].cmd("curl -s -m 2 http://169.254.169.254/latest/meta-data/instance-id").strip() == \
        cloud["instance"]["InstanceId"]


def test_another_accounts_image_is_refused(cloud):
    dep, bob = cloud["dep"], cloud["ec2"]
    alice = dep.aws_client("ec2", access_key=cloud["alice"][1], secret_key=cloud["alice"][2])
    with pytest.raises(ClientError) as err:  # Bob cannot register Alice's object ...
        bob.register_image(ImageLocation="alice-images/private.img", Name="stolen")
    assert err.value.response["Error"]["Code"] == "InvalidManifest"
    emi = alice.register_image(ImageLocation="alice-images/private.img", Name="private")["ImageId"]
    assert emi not in [i["ImageId"] for i in bob.describe_images()["Images"]]
    with pytest.raises(ClientError) as err:  # ... nor boot her private image
        bob.run_instances(ImageId=emi, MinCount=1, MaxCount=1)
    assert err.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"


def test_an_experiment_admits_one_more_public_service(cloud):
    """Deployment.admit (the keepalived baseline's responder on the CLC VIP's 8080)."""
    dep = cloud["dep"]
    holder = next(m for m in dep.plan.pair("clc").members if dep.member_state(m) == "ENABLED")
    dep.start("http8080", holder, label="http8080", wait=False,
              argv=[sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080"])
    assert wait_until(lambda: dep.listening(holder, 8080), 10, 0.05)
    url = "http://10.0.0.10:8080/"
    assert dep["gw"].cmd(f"curl -s -o /dev/null -m 2 -w '%{{http_code}}' {url}").strip() == "200"
    assert dep["user"].cmd(f"curl -s -o /dev/null -m 1 -w '%{{http_code}}' {url}").strip() == "000"
    dep.admit("10.0.0.10", 8080)
    dep.admit("10.0.0.10", 8080)  # once is enough: the second changes nothing
    assert dep["gw"].cmd("nft list chain ip eucalab-site forward").count("tcp dport 8080") == 1
    assert dep["user"].cmd(f"curl -s -o /dev/null -m 2 -w '%{{http_code}}' {url}").strip() == "200"
    dep.stop(holder, "http8080")
