"""High availability on the real network: the fault table, and one regression test for each
failure the real Eucalyptus had (its issue tracker: EUCA-2281, -3202, -3440, -4846, -8110)."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from components.common.events import read_events
from experiments.testbed.deployment import Deployment, wait_until
from tests.support.probes import HttpProbe as Probe
from tests.support.util import web_image
from topologies.spec import DeploymentSpec

from .conftest import aws_client


def state(dep, host: str) -> str | None:
    """A member's current state, from its own event log (no network needed)."""
    return dep.member_state(host)


def enabled_members(dep, pair: str) -> list[str]:
    p = next(x for x in dep.plan.pairs if x.name == pair)
    return [m for m in p.members if state(dep, m) == "ENABLED"]


def taken_over(dep, pair: str, old: str) -> bool:
    members = enabled_members(dep, pair)
    return len(members) == 1 and members[0] != old


def heal(dep, pair: str) -> str:
    """Bring both members back and wait for exactly one ENABLED; returns it."""
    p = next(x for x in dep.plan.pairs if x.name == pair)
    for m in p.members:
        dep.set_link(m, None, up=True)
        proc = dep.process(m)
        if not proc.alive():
            dep.start(p.kind, m)
    # One ENABLED, one DISABLED, each hearing the other (a standby that has not yet heard
    # its peer since it restarted rightly refuses to take over).
    assert wait_until(lambda: dep.redundant(p), 15), {m: state(dep, m) for m in p.members}
    # ... and the VIP answers on the cloud network (gratuitous ARP has done its work), asked
    # from the gateway, which routes users' requests (the site firewall keeps users off the
    # CC's and SC's VIPs).
    assert wait_until(lambda: dep["gw"].cmd(
        f"curl -s -m 0.5 -o /dev/null -w '%{{http_code}}' http://{p.vip}:{p.port}/health").strip() == "200", 5)
    return enabled_members(dep, pair)[0]


@pytest.fixture(scope="module")
def ha(tmp_path_factory):
    spec = DeploymentSpec(name="test-ha", clusters=1, ncs_per_cluster=2, vm_slots_per_nc=2)
    with Deployment(spec, run_dir=tmp_path_factory.mktemp("ha")) as dep:
        dep.start_services()
        for pair in ("clc", "walrus", "cc1", "sc1"):
            heal(dep, pair)
        ec2, s3 = aws_client(dep, "ec2"), aws_client(dep, "s3")
        emi, _ = web_image(ec2, s3, "ha.img", "ha-image")
        iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        assert wait_until(lambda: ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
                          ["State"]["Name"] == "running")
        eip = ec2.allocate_address()["PublicIp"]
        ec2.associate_address(InstanceId=iid, PublicIp=eip)
        yield {"dep": dep, "ec2": ec2, "s3": s3, "iid": iid, "eip": eip}


def test_clc_kill9_fails_over_with_all_data(ha):
    """EUCA-3202 (no failover after kill -9) and EUCA-8110 (data lost during failover)."""
    dep, ec2 = ha["dep"], ha["ec2"]
    primary = heal(dep, "clc")
    gid = ec2.create_security_group(GroupName="written-before-crash", Description="x")["GroupId"]
    before = sorted(i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"])
    with Probe(dep, "http://10.0.0.10:8773/health") as probe:
        t = time.monotonic()
        dep.kill(primary)
        assert wait_until(lambda: taken_over(dep, "clc", primary), 5)
        time.sleep(0.3)
    outage = probe.outage_after(t)
    assert outage is not None and outage < 1.0, outage
    after = sorted(i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"])
    assert after == before
    assert gid in [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    # The old primary comes back as DISABLED and catches up; it never overwrites newer state.
    ec2.create_security_group(GroupName="written-after-failover", Description="y")
    dep.start("clc", primary)
    assert wait_until(lambda: state(dep, primary) == "DISABLED", 5)
    new = enabled_members(dep, "clc")[0]
    seq = lambda h: max([e["seq"] for e in read_events(dep.process(h).events_path) if e["event"] == "state.write"]
                        + [0])
    assert wait_until(lambda: any(e["event"] == "ha.caught_up" for e in read_events(dep.process(primary).events_path)),
                      5)
    assert len(enabled_members(dep, "clc")) == 1 and seq(new) >= 1


def test_walrus_failover_keeps_every_acknowledged_object(ha):
    """EUCA-8110: objects put before the Walrus primary crash are all there after."""
    dep, s3 = ha["dep"], ha["s3"]
    primary = heal(dep, "walrus")
    s3.create_bucket(Bucket="durable")
    data = {f"obj-{i}": os.urandom(4096 + i) for i in range(20)}
    for k, v in data.items():
        s3.put_object(Bucket="durable", Key=k, Body=v)
    dep.kill(primary)
    assert wait_until(lambda: taken_over(dep, "walrus", primary), 5)
    for k, v in data.items():
        assert s3.get_object(Bucket="durable", Key=k)["Body"].read() == v
    dep.start("walrus", primary)
    heal(dep, "walrus")


def test_walrus_multipart_upload_completes_after_a_failover(ha):
    """Parts acknowledged before the Walrus primary crashes are listed by its successor,
    and the upload goes on and completes there."""
    dep, s3 = ha["dep"], ha["s3"]
    primary = heal(dep, "walrus")
    s3.create_bucket(Bucket="multipart-ha")
    parts = [os.urandom(5 * 2**20), os.urandom(5 * 2**20), os.urandom(2**20 + 7)]
    upload = s3.create_multipart_upload(Bucket="multipart-ha", Key="image.img")["UploadId"]
    etags = [s3.upload_part(Bucket="multipart-ha", Key="image.img", UploadId=upload, PartNumber=n,
                            Body=parts[n - 1])["ETag"] for n in (1, 2)]
    dep.kill(primary)
    assert wait_until(lambda: taken_over(dep, "walrus", primary), 5)
    listed = s3.list_parts(Bucket="multipart-ha", Key="image.img", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
        (n, etags[n - 1], len(parts[n - 1])) for n in (1, 2)]
    etags.append(s3.upload_part(Bucket="multipart-ha", Key="image.img", UploadId=upload, PartNumber=3,
                                Body=parts[2])["ETag"])
    s3.complete_multipart_upload(Bucket="multipart-ha", Key="image.img", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    assert s3.get_object(Bucket="multipart-ha", Key="image.img")["Body"].read() == b"".join(parts)
    dep.start("walrus", primary)
    heal(dep, "walrus")


def cc_host_failure(dep, primary: str, eip: str, iid: str) -> float | None:
    """Every link of the primary CC down with its process, the instance probed through its
    elastic IP from the user host until 0.5 s after the peer took over; the outage."""
    with Probe(dep, f"http://{eip}/", check=lambda s, b: s == 200 and b.strip().decode() == iid) as probe:
        t = time.monotonic()
        dep.set_link(primary, None, up=False)
        dep.kill(primary)
        assert wait_until(lambda: taken_over(dep, "cc1", primary), 5), recent(dep, "cc1")
        time.sleep(0.5)
    return probe.outage_after(t)


def recent(dep, pair: str, n: int = 12) -> dict:
    """The last HA, state, intent and router events of each member (what a failed wait shows)."""
    p = next(x for x in dep.plan.pairs if x.name == pair)
    kinds = ("ha.", "state.", "intent.", "router.", "arbitrator.", "service.")
    return {m: [{k: v for k, v in e.items() if k not in ("host", "component")}
                for e in dep.process(m).events() if e["event"].startswith(kinds)][-n:] for m in p.members}


def test_cc_failover_moves_elastic_ip_traffic(ha):
    """EUCA-2281: a newly ENABLED CC announces its addresses (gratuitous ARP), so traffic resumes."""
    dep, eip, iid = ha["dep"], ha["eip"], ha["iid"]
    primary = heal(dep, "cc1")
    assert dep["user"].cmd(f"curl -s -m 2 http://{eip}/").strip() == iid
    outage = cc_host_failure(dep, primary, eip, iid)
    assert outage is not None and outage < 2.0, outage
    assert dep["user"].cmd(f"curl -s -m 2 http://{eip}/").strip() == iid
    # The gateway learned the new CC's MAC by gratuitous ARP, not by timing out.
    new = enabled_members(dep, "cc1")[0]
    new_mac = dep.plan.hosts[new].intf("cloud").mac
    assert new_mac in dep["gw"].cmd(f"ip neigh show {eip}")
    heal(dep, "cc1")


def _controller_events(dep) -> list[dict]:
    return read_events(dep.run_dir / "controller" / "events.jsonl")


def _applied(dep, primary: str, since: int) -> bool:
    """Has the controller put ``primary``'s intent into the switches (``intent.applied``)
    since its event number ``since``?"""
    return any(e["event"] == "intent.applied" and e.get("primary_cc") == primary and e.get("installed")
               for e in _controller_events(dep)[since:])


def _standby(dep) -> dict:
    status, table = dep.control_request("GET", "/intent/standby")
    return table.get("clusters", {}).get("1", {}) if status == 200 else {}


def _staged(dep, host: str) -> bool:
    """Is ``host`` staged, as both ends know it? The controller's table names it staged
    as it takes the report, before its flows are in and its answer has reached the CC, and
    only the answer makes the CC's takeover skip the controller: a controller stopped in
    between leaves a CC that promotes by pushing its intent, and waits on it."""
    table = _standby(dep)
    return (table.get("host") == host and table.get("staged") is True
            and any(e["event"] == "intent.standby" and e.get("staged") and e.get("epoch") == table.get("epoch")
                    for e in dep.process(host).events()))


def test_a_staged_cc_takes_over_with_the_controller_stopped(ha):
    """The secondary CC, its router withdrawn, is kept ready by the switches: its takeover
    needs nothing from the SDN controller (stopped for the whole takeover here). Back, the
    controller takes the new primary's intent and fences the old primary out of the groups'
    VLANs until it reports itself withdrawn under the new epoch."""
    dep, eip, iid = ha["dep"], ha["eip"], ha["iid"]
    primary = heal(dep, "cc1")
    secondary = next(m for m in ("c1cc1", "c1cc2") if m != primary)
    assert wait_until(lambda: _staged(dep, secondary), 5), _standby(dep)
    pid = dep.controller.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        outage = cc_host_failure(dep, primary, eip, iid)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert outage is not None and outage < 1.0, outage
    assert wait_until(lambda: dep.control_request("GET", "/intent")[1]["clusters"]["1"]["primary_cc"] == secondary, 5)
    epoch = dep.control_request("GET", "/intent")[1]["clusters"]["1"]["epoch"]
    assert _standby(dep).get("staged") is False  # the report was the new primary's: nobody is staged
    heal(dep, "cc1")
    assert wait_until(lambda: _standby(dep) == {"host": primary, "epoch": epoch, "staged": True}, 5), _standby(dep)


def test_a_frozen_primary_cc_is_fenced_out_of_the_groups(ha):
    """SIGSTOP of the primary CC: its kernel still holds the group gateway and answers ARP
    for it, but the new primary's intent takes it out of the groups' VLANs, so an instance
    hears the new primary only. Resumed, it steps down, withdraws its router and is staged
    again under the new epoch."""
    dep, eip, iid = ha["dep"], ha["eip"], ha["iid"]
    primary = heal(dep, "cc1")
    secondary = next(m for m in ("c1cc1", "c1cc2") if m != primary)
    assert wait_until(lambda: _staged(dep, secondary), 5), _standby(dep)
    intent = dep.control_request("GET", "/intent")[1]["clusters"]["1"]
    inst = next(i for i in intent["instances"] if i["id"] == iid)
    gateway = next(g["gateway"] for g in intent["groups"] if g["id"] == inst["group"])
    slot, (old_mac, new_mac) = inst["slot"], (dep.plan.hosts[h].intf("priv1").mac for h in (primary, secondary))
    since = len(_controller_events(dep))
    dep.kill(primary, sig=signal.SIGSTOP)
    try:
        # Accepted is not applied: wait until the switches carry the new primary's intent.
        assert wait_until(lambda: _applied(dep, secondary, since), 5)
        out = dep[slot].cmd(f"arping -c 3 -w 2 -I {dep.plan.hosts[slot].interfaces[0].name} {gateway}")
        assert set(re.findall(r"\[([0-9a-f:]{17})\]", out.lower())) == {new_mac}, out
        assert old_mac in dep[primary].cmd("ip -o link")  # the frozen host is up, its kernel answering
        assert dep["user"].cmd(f"curl -s -m 2 http://{eip}/").strip() == iid
    finally:
        dep.kill(primary, sig=signal.SIGCONT)
    assert wait_until(lambda: state(dep, primary) == "DISABLED", 5)
    epoch = dep.control_request("GET", "/intent")[1]["clusters"]["1"]["epoch"]
    assert wait_until(lambda: _standby(dep) == {"host": primary, "epoch": epoch, "staged": True}, 5), _standby(dep)
    heal(dep, "cc1")


def _metadata_dnat(dep, host: str) -> list[tuple[str, int]]:
    """The metadata DNAT rules in ``host``'s router table: (target, packets) each."""
    out = dep[host].cmd("nft list chain ip eucalab EUCA-PREROUTING")
    return [(target, int(packets)) for packets, target in
            re.findall(r"169\.254\.169\.254 tcp dport 80 counter packets (\d+) bytes \d+ dnat to (\S+)", out)]


def test_metadata_nat_points_at_the_clc_vip_and_only_the_primary_cc_translates(ha):
    """EUCA-3440 (metadata NAT rules pointing at both CLCs): each CC holds one metadata
    DNAT, to the CLC pair's virtual IP. The secondary's is armed, with none of the router's
    addresses, so an instance's metadata request is translated by the primary alone."""
    dep, iid = ha["dep"], ha["iid"]
    primary = heal(dep, "cc1")
    secondary = next(m for m in ("c1cc1", "c1cc2") if m != primary)
    target = f"{dep.plan.pair('clc').vip}:8773"
    assert wait_until(lambda: [t for t, _ in _metadata_dnat(dep, secondary)] == [target], 5), \
        dep[secondary].cmd("nft list ruleset")
    intent = dep.control_request("GET", "/intent")[1]["clusters"]["1"]
    inst = next(i for i in intent["instances"] if i["id"] == iid)
    gateway = next(g["gateway"] for g in intent["groups"] if g["id"] == inst["group"])
    assert f"inet {gateway}/" in dep[primary].cmd("ip -o -4 addr")
    assert f"inet {gateway}/" not in dep[secondary].cmd("ip -o -4 addr")
    before = {h: _metadata_dnat(dep, h) for h in (primary, secondary)}
    assert [t for t, _ in before[primary]] == [target]
    url = "http://169.254.169.254/latest/meta-data/instance-id"
    assert dep[inst["slot"]].cmd(f"curl -s -m 3 {url}").strip() == iid
    after = {h: _metadata_dnat(dep, h) for h in (primary, secondary)}
    assert after[primary][0][1] > before[primary][0][1]
    assert after[secondary] == before[secondary]


def test_heartbeat_link_cut_never_two_enabled(ha):
    """EUCA-4846: with the heartbeat network cut, both members reach each other over the cloud
    network: no failover, and never two ENABLED."""
    dep = ha["dep"]
    primary = heal(dep, "clc")
    hb_net = dep.plan.pair("clc").heartbeat_network
    dep.set_link(primary, hb_net, up=False)
    seen = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        members = enabled_members(dep, "clc")
        assert len(members) <= 1, members
        seen.update(members)
        time.sleep(0.02)
    assert seen == {primary}
    dep.set_link(primary, hb_net, up=True)
    # No flapping after the heal: neither member changes state in the 10 s that follow.
    healed = time.monotonic()
    time.sleep(10)
    changes = [(m, e["to"]) for m in ("clc1", "clc2") for e in read_events(dep.process(m).events_path)
               if e["event"] == "state.change" and e["t_mono"] >= healed]
    assert changes == [] and enabled_members(dep, "clc") == [primary]


def test_one_arbitrator_down_is_advisory_only(ha):
    dep = ha["dep"]
    primary = heal(dep, "clc")
    arb = next(a.name for a in dep.plan.arbitrators if a.host == primary)
    ip = dep.plan.hosts[primary].ip_on("cloud")
    out = dep["clc1" if primary == "clc2" else "clc2"].cmd(
        f"curl -s -X POST -H 'X-Eucalab-Internal-Token: {dep.internal_token}' http://{ip}:8773/ha/arbitrators/{arb}/stop")
    assert '"stopped": true' in out
    time.sleep(3)
    assert enabled_members(dep, "clc") == [primary]
    events = [e["event"] for e in read_events(dep.process(primary).events_path)]
    assert "arbitrator.advisory" in events
    dep["clc1" if primary == "clc2" else "clc2"].cmd(
        f"curl -s -X POST -H 'X-Eucalab-Internal-Token: {dep.internal_token}' http://{ip}:8773/ha/arbitrators/{arb}/start")


def test_uplink_cut_fails_over_through_the_arbitrators(ha):
    """Users can't reach the primary (its cloud uplink is cut) but it still hears its peer on the
    heartbeat link: its arbitrators all fail, it goes NOTREADY and the peer takes over."""
    dep = ha["dep"]
    primary = heal(dep, "clc")
    t = time.monotonic()
    dep.set_link(primary, "cloud", up=False)
    assert wait_until(lambda: state(dep, primary) == "NOTREADY", 6)
    assert wait_until(lambda: taken_over(dep, "clc", primary), 2)
    spec = dep.spec.arbitrators
    assert time.monotonic() - t <= (spec.fail_after + 1) * spec.period_s + spec.timeout_s + 1.0
    dep.set_link(primary, "cloud", up=True)
    assert wait_until(lambda: state(dep, primary) == "DISABLED", 6)


def test_sigstopped_primary_steps_down_without_serving(ha):
    dep = ha["dep"]
    primary = heal(dep, "clc")
    ip = dep.plan.hosts[primary].ip_on("cloud")
    dep.kill(primary, sig=signal.SIGSTOP)
    assert wait_until(lambda: [m for m in ("clc1", "clc2") if m != primary and state(dep, m) == "ENABLED"], 5)
    dep.kill(primary, sig=signal.SIGCONT)
    # The resumed primary answers its API with 503 from the first request on, then steps down.
    codes = [dep["gw"].cmd(f"curl -s -o /dev/null -w '%{{http_code}}' -m 1 "  # a member's own address
                           f"'http://{ip}:8773/services/Eucalyptus?Action=DescribeInstances'").strip()
             for _ in range(5)]
    assert all(c in ("503", "000") for c in codes), codes
    assert wait_until(lambda: state(dep, primary) == "DISABLED", 5)
    assert len(enabled_members(dep, "clc")) == 1


def test_secondary_crash_is_no_outage(ha):
    dep = ha["dep"]
    primary = heal(dep, "clc")
    secondary = next(m for m in ("clc1", "clc2") if m != primary)
    with Probe(dep, "http://10.0.0.10:8773/health") as probe:
        t = time.monotonic()
        dep.kill(secondary)
        time.sleep(1.0)
    bad = [(round(a.sent - t, 3), round(a.done - a.sent, 3)) for a in probe.failures_after(t)]
    assert bad == [], bad
    assert enabled_members(dep, "clc") == [primary]
    assert any(e["event"] == "ha.peer_dead" for e in read_events(dep.process(primary).events_path))
    heal(dep, "clc")


def test_both_members_restart_together(ha):
    dep, ec2 = ha["dep"], ha["ec2"]
    heal(dep, "clc")
    gid = ec2.create_security_group(GroupName="before-double-restart", Description="z")["GroupId"]
    for m in ("clc1", "clc2"):
        dep.kill(m)
    for m in ("clc1", "clc2"):
        dep.process(m).popen.wait(timeout=5)
    for m in ("clc1", "clc2"):
        dep.start("clc", m, wait=False)
    heal(dep, "clc")
    assert gid in [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]]


def test_sc_failover_keeps_volume_data(ha):
    """Blocks written through an attachment before the SC primary crashes are read back
    through the same attachment after its peer took over."""
    dep, ec2, iid = ha["dep"], ha["ec2"], ha["iid"]
    primary = heal(dep, "sc1")
    vol = ec2.create_volume(Size=2, AvailabilityZone="cluster1")["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/vdb")
    listing = json.loads(dep["c1cc1" if state(dep, "c1cc1") == "ENABLED" else "c1cc2"].cmd(
        f"curl -s -H 'X-Eucalab-Internal-Token: {dep.internal_token}' http://10.0.1.10:8774/cluster/instances"))
    nc = next(i["nc"] for i in listing["instances"] if i["id"] == iid)
    base = f"http://{dep.plan.hosts[nc].main_ip}:8775/volumes/{vol}/blocks"
    token = f"-H 'X-Eucalab-Internal-Token: {dep.internal_token}'"
    data = os.urandom(500).hex()  # a Mininet shell line holds at most 4095 characters
    out = dep[nc].cmd(f"curl -s -m 5 -X PUT {token} --data-binary '{data}' '{base}?offset=65536'")
    assert json.loads(out) == {"written": True}
    dep.kill(primary)
    assert wait_until(lambda: taken_over(dep, "sc1", primary), 5)
    read = wait_until(lambda: dep[nc].cmd(f"curl -s -m 2 {token} '{base}?offset=65536&length={len(data)}'") == data
                      or None, 5)
    assert read, "the volume's data did not survive the SC failover"
    dep.start("sc", primary)
    heal(dep, "sc1")


def test_sc_failover_seen_through_an_elastic_ip(ha):
    """A user's block read through an instance's elastic IP (workload, the NC's disk channel,
    the NC's block session to the SC VIP) answers the same bytes again after the SC primary
    is killed."""
    dep, ec2, iid, eip = ha["dep"], ha["ec2"], ha["iid"], ha["eip"]
    primary = heal(dep, "sc1")
    heal(dep, "cc1")
    vol = ec2.create_volume(Size=1, AvailabilityZone="cluster1")["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=iid, Device="/dev/vdc")
    url = f"http://{eip}/volumes/{vol}/blocks"
    data = os.urandom(500).hex()
    assert json.loads(dep["user"].cmd(f"curl -s -m 5 -X PUT --data-binary '{data}' '{url}?offset=0'")) == \
        {"written": True}
    read = f"{url}?offset=0&length={len(data)}"
    with Probe(dep, read, check=lambda status, body: status == 200 and body == data.encode()) as probe:
        t = time.monotonic()
        dep.kill(primary, sig=signal.SIGKILL)
        assert wait_until(lambda: taken_over(dep, "sc1", primary), 5)
        assert wait_until(lambda: probe.served_since(t), 5)
        time.sleep(0.3)
    outage = probe.outage_after(t)
    assert outage is not None and outage < 2.0, outage
    assert dep["user"].cmd(f"curl -s -m 3 '{read}'") == data
    dep.start("sc", primary)
    heal(dep, "sc1")
