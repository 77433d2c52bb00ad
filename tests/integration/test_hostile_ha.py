"""Hostile packets on the real network: forged, replayed and garbled heartbeats at every
HA member, block logins without the attachment's secret or from the wrong host, and
replication endpoints called with an NC's credential.

The attacker sits on the ``user`` host and inside a tenant's instance, with raw sockets: it
can put any source address on a packet. The site's firewall (the border gateway) and the
primary CC keep those packets from the members; so that each channel is shown to hold on
its own, the same packets also go out from the border gateway itself, a host on the cloud
network inside the firewall, from where they reach every member. A forged heartbeat
claiming to come from the peer's own address gets past the address check and meets the
HMAC. A real heartbeat, recorded on the cloud network, is replayed. Nothing may
change who serves, and the cloud answers throughout.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time

import pytest

from components.common.ha_config import HEARTBEAT_PORT
from components.sc import blockproto as bp
from experiments.testbed.deployment import Deployment, wait_until
from topologies.spec import DeploymentSpec

from .conftest import aws_client
from .test_ha import heal

ETH_P_IP = 0x0800


def udp_datagram(src: str, dst: str, payload: bytes, sport: int = HEARTBEAT_PORT,
                 dport: int = HEARTBEAT_PORT) -> bytes:
    """An IPv4 packet carrying one UDP datagram, with any source address (the kernel fills
    the IP checksum and the packet id; a UDP checksum of 0 means none)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


def send_raw(dep, host: str, packets: list[tuple[str, bytes]]) -> None:
    """Send (destination, IPv4 packet) from ``host`` through a raw socket."""
    with dep.in_host(host):
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            for dst, packet in packets:
                try:
                    s.sendto(packet, (dst, 0))
                except OSError:
                    pass  # no route from there: that packet cannot reach anyone either


def record_heartbeat(dep, member: str, interface: str, peer_ip: str, timeout: float = 3.0) -> bytes:
    """One real heartbeat from ``peer_ip`` to ``member``, read off ``member``'s interface."""
    with dep.in_host(member):
        with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP)) as s:
            s.bind((interface, ETH_P_IP))
            s.settimeout(timeout)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = s.recv(65535)
                ihl = (data[0] & 0x0F) * 4
                if data[9] != socket.IPPROTO_UDP or socket.inet_ntoa(data[12:16]) != peer_ip:
                    continue
                if struct.unpack("!H", data[ihl + 2:ihl + 4])[0] == HEARTBEAT_PORT:
                    return data[ihl + 8:]
    raise AssertionError(f"no heartbeat from {peer_ip} seen on {member}:{interface}")


def the_issues_forgery(pair: str, member: str, state: str, seq: int) -> bytes:
    """The unsigned heartbeat of the issue: any state, an epoch far ahead."""
    return json.dumps({"pair": pair, "member": member, "boot": 999, "seq": seq, "state": state,
                       "epoch": 1000000, "last_seq": 0}).encode()


def state_changes(dep, hosts) -> dict[str, int]:
    """How many times each member changed state or was promoted or demoted, so far."""
    kinds = ("state.change", "ha.promote", "ha.demote", "ha.state_reset")
    return {h: sum(1 for e in dep.process(h).events() if e["event"] in kinds) for h in hosts}


def rejections_since(dep, host: str, t_wall: float) -> set[str]:
    """The reasons ``host``'s agent gave for refusing heartbeats since ``t_wall``."""
    reasons: set[str] = set()
    for e in dep.process(host).events():
        if e["event"] == "ha.heartbeat_rejected" and e["t_wall"] >= t_wall:
            reasons |= set(e["counts"])
    return reasons


def cluster_view(dep, cluster: int = 1) -> list[dict]:
    """The instances as the cluster's CC sees them (their NC and VM slot), asked as the operator."""
    return json.loads(dep[f"c{cluster}cc1"].cmd(
        f"curl -s -H 'X-Eucalab-Internal-Token: {dep.internal_token}' http://10.0.{cluster}.10:8774/cluster/instances"
    ))["instances"]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """The default deployment (every pair, the default heartbeat timers), a running instance
    with a volume attached, everything redundant."""
    with Deployment(DeploymentSpec(name="test-hostile"), run_dir=tmp_path_factory.mktemp("hostile")) as dep:
        dep.start_services()
        for pair in dep.plan.pairs:
            if pair.secondary is not None:
                heal(dep, pair.name)
        ec2, s3 = aws_client(dep, "ec2"), aws_client(dep, "s3")
        s3.create_bucket(Bucket="images")
        s3.put_object(Bucket="images", Key="hostile.img", Body=os.urandom(2**20))
        emi = ec2.register_image(ImageLocation="images/hostile.img", Name="hostile")["ImageId"]
        iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1,
                                Placement={"AvailabilityZone": "cluster1"})["Instances"][0]["InstanceId"]
        assert wait_until(lambda: ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
                          ["State"]["Name"] == "running", 30)
        vol = ec2.create_volume(Size=1, AvailabilityZone="cluster1")["VolumeId"]
        ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/vdb")
        placed = next(i for i in cluster_view(dep) if i["id"] == iid)
        yield {"dep": dep, "ec2": ec2, "s3": s3, "iid": iid, "vol": vol, "slot": placed["slot"], "nc": placed["nc"]}


def test_forged_replayed_and_garbled_heartbeats_change_nothing(cloud):
    dep, ec2, s3 = cloud["dep"], cloud["ec2"], cloud["s3"]
    pairs = [p for p in dep.plan.pairs if p.secondary is not None]
    members = [m for p in pairs for m in p.members]
    user_ip = dep.plan.hosts["user"].main_ip
    # Recorded before the attack, on the cloud network: one real heartbeat to each member.
    recorded = {}
    for p in pairs:
        for m in p.members:
            peer = p.secondary if m == p.primary else p.primary
            intf = dep.plan.hosts[m].intf("cloud").name
            recorded[m] = record_heartbeat(dep, m, intf, dep.plan.hosts[peer].ip_on("cloud"))
    before = state_changes(dep, members)
    primaries = {p.name: [m for m in p.members if dep.member_state(m) == "ENABLED"] for p in pairs}
    t0 = time.time()
    for burst in range(3):
        packets = []
        for p in pairs:
            for m in p.members:
                peer = p.secondary if m == p.primary else p.primary
                target, spoofed = dep.plan.hosts[m].ip_on("cloud"), dep.plan.hosts[peer].ip_on("cloud")
                garbled = bytearray(recorded[m])
                garbled[-3] ^= 0x20
                for state in ("DISABLED", "NOTREADY", "ENABLED"):
                    forged = the_issues_forgery(p.name, peer, state, 10 * burst + 1)
                    packets += [(target, udp_datagram(user_ip, target, forged)),  # as the issue sent it
                                (target, udp_datagram(spoofed, target, forged)),  # from the peer's address
                                (p.vip, udp_datagram(spoofed, p.vip, forged))]  # at the VIP
                packets += [(target, udp_datagram(spoofed, target, recorded[m])),  # replayed
                            (target, udp_datagram(spoofed, target, bytes(garbled))),
                            (target, udp_datagram(spoofed, target, os.urandom(300)))]
        send_raw(dep, "user", packets)
        send_raw(dep, cloud["slot"], packets)  # and from inside the tenant's instance
        send_raw(dep, "gw", packets)  # and from inside the site's firewall
        # The cloud answers while it is under attack.
        assert ec2.describe_instances(InstanceIds=[cloud["iid"]])["Reservations"]
        assert "images" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        time.sleep(0.2)
    time.sleep(1.0)  # longer than a window: a forged "peer" would have been acted on by now
    assert state_changes(dep, members) == before
    assert {p.name: [m for m in p.members if dep.member_state(m) == "ENABLED"] for p in pairs} == primaries
    for m in members:
        # Each member saw the forgeries (the gateway's reach it), and refused each kind for
        # its own reason.
        assert {"address", "tag", "replay"} <= rejections_since(dep, m, t0), (m, rejections_since(dep, m, t0))
    assert ec2.describe_instances(InstanceIds=[cloud["iid"]])["Reservations"]
    assert all(dep.redundant(p) for p in pairs)


def _sc_primary(dep, cluster: int = 1) -> str:
    pair = next(p for p in dep.plan.pairs if p.name == f"sc{cluster}")
    return next(m for m in pair.members if dep.member_state(m) == "ENABLED")


def _block_login(dep, host: str, target: str, volume: str, secret: str | None) -> int | str:
    """A login from ``host`` to the SC at ``target``, with the attachment's secret or a guessed
    answer: the block protocol's status, or "unreachable" when no connection could be made."""
    with dep.in_host(host):
        try:
            s = socket.create_connection((target, bp.BLOCK_PORT), timeout=2)
        except OSError:
            return "unreachable"
        with s:
            def exchange(op: bytes, payload: bytes) -> tuple[int, bytes]:
                s.sendall(bp.HEADER.pack(op, 0, len(payload)) + payload)
                head = s.recv(bp.REPLY.size, socket.MSG_WAITALL)
                status, n = bp.REPLY.unpack(head)
                return status, s.recv(n, socket.MSG_WAITALL) if n else b""
            status, challenge = exchange(b"L", volume.encode())
            assert status == bp.OK
            answer = bp.login_answer(secret, challenge, volume) if secret else os.urandom(bp.ANSWER_BYTES)
            status, _ = exchange(b"A", answer)
            if status == bp.OK:  # the issue's attack went on to read the volume
                exchange(b"R", b"")
            return status


def test_block_logins_without_the_secret_or_from_the_wrong_host_are_refused(cloud):
    dep, vol = cloud["dep"], cloud["vol"]
    vip = next(p for p in dep.plan.pairs if p.name == "sc1").vip
    sc = _sc_primary(dep)
    volumes = json.loads((dep.process(sc).dir / "data" / "volumes.json").read_text())["volumes"]
    secret = volumes[vol]["attachment"]["secret"]
    slot, nc = cloud["slot"], cloud["nc"]
    # The site's firewall keeps the user host from the SC altogether; from inside it (the
    # border gateway, on the cloud network) every login reaches the SC and is refused.
    assert _block_login(dep, "user", vip, vol, secret) == "unreachable"
    attempts = {
        "inside the firewall, no secret": _block_login(dep, "gw", vip, vol, None),
        "inside the firewall, the attachment's secret": _block_login(dep, "gw", vip, vol, secret),  # not its NC
        "inside the firewall, no such volume": _block_login(dep, "gw", vip, "vol-0badf00d", None),
    }
    assert attempts == {k: bp.LOGIN_REFUSED for k in attempts}
    # From inside the tenant's instance, with the secret, at the VIP and at the SC's own
    # addresses on the cluster's private network: refused, where the network lets it connect.
    private = dep.plan.hosts[sc].ip_on("priv1")
    from_instance = {t: _block_login(dep, slot, t, vol, secret) for t in (vip, private)}
    assert set(from_instance.values()) <= {bp.LOGIN_REFUSED, "unreachable"}, from_instance
    # The NC the volume is attached to still reads and writes through its session.
    nc_ip = dep.plan.hosts[nc].main_ip
    token = f"-H 'X-Eucalab-Internal-Token: {dep.internal_token}'"
    assert json.loads(dep[nc].cmd(f"curl -s -X PUT {token} --data-binary 'still-mine' "
                                  f"'http://{nc_ip}:8775/volumes/{vol}/blocks?offset=0'")) == {"written": True}
    assert dep[nc].cmd(f"curl -s {token} 'http://{nc_ip}:8775/volumes/{vol}/blocks?offset=0&length=10'") \
        == "still-mine"
    refused = [e for e in dep.process(sc).events() if e["event"] == "block.login_refused"]
    assert len(refused) >= len(attempts) + list(from_instance.values()).count(bp.LOGIN_REFUSED)


def test_replication_endpoints_refuse_an_nc_s_credential(cloud):
    """The issue: one token in every config, the NCs' included. An NC's own credential now
    reaches what an NC needs (an image from Walrus) and no replication endpoint."""
    dep = cloud["dep"]
    nc_token = json.loads((dep.process("c1n1").dir / "config").read_text())["internal_token"]
    with_nc = f"-H 'X-Eucalab-Internal-Token: {nc_token}'"

    def status(method: str, url: str) -> str:
        return dep["c1n1"].cmd(f"curl -s -m 3 -o /dev/null -w '%{{http_code}}' -X {method} {with_nc} "
                               f"-H 'X-Eucalab-Op: {{}}' -d '{{}}' '{url}'").strip()

    replication = {
        "clc ops": ("POST", "http://10.0.0.10:8773/internal/ha/ops"),
        "clc export": ("GET", "http://10.0.0.10:8773/internal/ha/ops?after=0"),
        "walrus apply": ("POST", "http://10.0.0.20:8773/internal/ha/apply"),
        "walrus ops": ("GET", "http://10.0.0.20:8773/internal/ha/ops"),
        "sc state": ("GET", "http://10.0.1.20:8773/internal/ha/sc/state"),
        "sc volumes": ("GET", "http://10.0.1.20:8773/volumes"),
        "cc state": ("PUT", "http://10.0.1.10:8774/internal/ha/state"),
        "clc accounts": ("GET", "http://10.0.0.10:8773/internal/accounts/AKIAEXAMPLE"),
    }
    assert {k: status(*v) for k, v in replication.items()} == {k: "403" for k in replication}
    assert status("GET", "http://10.0.0.20:8773/internal/object?bucket=images&key=hostile.img") == "200"


def test_each_credential_is_in_its_holders_configs_only(cloud):
    """A pair's heartbeat key in its two members' configs, a role's token in that role's
    configs, the operator's in none: reading one host's config gives that host's credentials."""
    dep = cloud["dep"]
    configs = {host: (proc.dir / "config").read_text() for (host, _), proc in dep.processes.items()
               if (proc.dir / "config").exists()}
    for pair in dep.plan.pairs:
        if pair.secondary is not None:
            holders = {h for h, text in configs.items() if dep.pair_secrets[pair.name] in text}
            assert holders == set(pair.members), pair.name
    for role, token in dep.role_tokens.items():
        holders = {h for h, text in configs.items() if token in text}
        assert holders == {h for h in configs if dep.plan.hosts[h].role == role}, role
