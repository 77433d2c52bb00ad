"""The CLC's resources stay bounded and in line with its CCs: terminated instances retired,
indexed queries, ids that cannot collide, a sync loop that survives a bad answer, and
elastic IPs a CC lost brought back."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest

from components.clc import instances as clc_instances
from components.clc import service as clc_service
from components.clc.ec2 import Params
from components.clc.state import Store
from components.common.events import read_events

from tests.support.clc_client import FakeCC, ec2_client, upload_image
from tests.support.util import wait_until
from tests.support.processes import ADMIN, TOKEN, component
from tests.support.util import free_port

from .test_clc_state import OPS

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

ADDRESSES = [f"127.0.0.{n}" for n in range(2, 40)]


def _describe_ids(ec2) -> set[str]:
    return {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}


@contextlib.contextmanager
def _cloud(tmp_path, cc: FakeCC, **extra):
    """A CLC beside a Walrus holding the image these tests register (images/r.img);
    yields the CLC's (base URL, config, process)."""
    clc_port, walrus_port = free_port(), free_port()
    ends = {"clc": f"http://127.0.0.1:{clc_port}/services/Eucalyptus",
            "walrus": f"http://127.0.0.1:{walrus_port}/services/Walrus", "cc": {"cluster1": cc.url}}
    with component("walrus", tmp_path / "walrus", port=walrus_port, endpoints=ends) as (walrus, _, _), \
            component("clc", tmp_path, port=clc_port, endpoints=ends, cluster_poll_s=0.02, **extra) as clc:
        upload_image(walrus, "images/r.img")
        yield clc


def test_terminated_instances_are_retired_after_the_retention(tmp_path):
    with FakeCC(ADDRESSES) as cc, _cloud(tmp_path, cc, terminated_retention_s=0.5) as (base, cfg, proc):
        ec2 = ec2_client(base)
        emi = ec2.register_image(ImageLocation="images/r.img", Name="retire")["ImageId"]
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=emi, MinCount=3, MaxCount=3)["Instances"]]
        assert wait_until(lambda: {i["State"]["Name"] for r in ec2.describe_instances()["Reservations"]
                                 for i in r["Instances"]} == {"running"})
        ec2.terminate_instances(InstanceIds=ids[:2])
        # Shown terminated for the retention, then gone; the live one stays.
        shown = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"]
                 for i in r["Instances"]}
        assert shown == {ids[0]: "terminated", ids[1]: "terminated", ids[2]: "running"}
        assert wait_until(lambda: _describe_ids(ec2) == {ids[2]}, timeout=5)
        db = sqlite3.connect(f"file:{tmp_path / 'data' / 'clc.db'}?mode=ro", uri=True)
        try:
            assert [r[0] for r in db.execute("SELECT id FROM instances")] == [ids[2]]
        finally:
            db.close()


def test_the_retention_defaults_to_an_hour(tmp_path):
    cfg = {"host": "clc1", "data_dir": str(tmp_path), "admin": ADMIN, "internal_token": TOKEN}
    assert clc_service.CloudController(cfg).retention_s == 3600.0
    assert clc_service.CloudController({**cfg, "terminated_retention_s": 5}).retention_s == 5.0


def test_the_queries_of_the_sync_loop_and_the_api_use_indexes(tmp_path):
    store = Store(tmp_path / "clc.db")
    plans = {
        "sync": f"SELECT id, state FROM instances WHERE zone='cluster1' AND {clc_instances.LIVE}",
        "account": "SELECT * FROM instances WHERE account='1' ORDER BY launched, launch_index",
        "metadata": "SELECT * FROM instances WHERE private_ip='10.0.0.1' AND state IN ('pending', 'running')",
        "retire": "SELECT id FROM instances WHERE state='terminated' AND ended < 5",
        "addresses": "SELECT public_ip FROM addresses WHERE instance='i-1'",
    }
    for name, sql in plans.items():
        plan = " ".join(r[-1] for r in store.db.execute("EXPLAIN QUERY PLAN " + sql))
        assert "USING" in plan and "INDEX" in plan and not plan.startswith("SCAN"), (name, plan)


def test_instance_ids_are_unique_against_the_store_and_the_runs_in_flight(tmp_path, monkeypatch):
    with FakeCC(ADDRESSES) as cc, _cloud(tmp_path, cc) as (base, cfg, proc):
        ec2 = ec2_client(base)
        emi = ec2.register_image(ImageLocation="images/r.img", Name="unique")["ImageId"]
        taken = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ctl = clc_service.CloudController({**cfg, "events_path": None})
    ctl.instances._reserved_ids.add("i-0000000b")
    drawn = iter([taken, "i-0000000b", taken, "i-0000000c", "i-0000000c", "i-0000000d"])
    monkeypatch.setattr(clc_instances, "new_id", lambda prefix: next(drawn))
    assert ctl.instances._new_instance_ids(2) == ["i-0000000c", "i-0000000d"]
    assert {"i-0000000b", "i-0000000c", "i-0000000d"} <= ctl.instances._reserved_ids


def test_the_sync_loop_survives_a_malformed_view_and_goes_on(tmp_path):
    with FakeCC(ADDRESSES) as cc, _cloud(tmp_path, cc) as (base, cfg, proc):
        ec2 = ec2_client(base)
        emi = ec2.register_image(ImageLocation="images/r.img", Name="garbled")["ImageId"]
        cc.garbled_listings = 3
        iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        assert wait_until(lambda: cc.garbled_listings == 0)
        cc.instances[iid]["state"] = "terminated"  # the CC's news after the bad answers
        assert wait_until(lambda: [i["State"]["Name"] for r in ec2.describe_instances(InstanceIds=[iid])
                                 ["Reservations"] for i in r["Instances"]] == ["terminated"])
    failed = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "loop.failed"]
    assert failed and failed[0]["loop"] == "clc.sync" and "KeyError" in failed[0]["traceback"]


def test_an_address_the_cc_lost_is_associated_again_and_a_second_one_replaces_the_first(tmp_path):
    with FakeCC(ADDRESSES) as cc, _cloud(tmp_path, cc) as (base, cfg, proc):
        ec2 = ec2_client(base)
        emi = ec2.register_image(ImageLocation="images/r.img", Name="repair")["ImageId"]
        iid = ec2.run_instances(ImageId=emi, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        first, second = (ec2.allocate_address()["PublicIp"] for _ in range(2))
        ec2.associate_address(PublicIp=first, InstanceId=iid)
        # A CC that took over without the change (its standby copy was cut off) lacks it:
        # the CLC's sync tells it again.
        cc.elastic.pop(first)
        cc.instances[iid]["public_ip"] = None
        assert wait_until(lambda: cc.elastic.get(first) == iid)
        # A second address on the instance replaces the first, at the CLC as at the CC.
        ec2.associate_address(PublicIp=second, InstanceId=iid)
        shown = {a["PublicIp"]: a.get("InstanceId") for a in ec2.describe_addresses()["Addresses"]}
        assert shown == {first: None, second: iid}
        inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert inst["PublicIpAddress"] == second
        assert wait_until(lambda: cc.elastic == {second: iid})
        # And one the CC holds that the CLC does not is taken away.
        cc.elastic[first], cc.instances[iid]["public_ip"] = iid, first
        assert wait_until(lambda: cc.elastic == {second: iid} and cc.instances[iid]["public_ip"] == second)
        # An address the CLC has given to another instance is never taken from that one
        # because a stale view still shows it on the first.
        other, bare = (i["InstanceId"] for i in ec2.run_instances(ImageId=emi, MinCount=2, MaxCount=2)["Instances"])
        ec2.associate_address(PublicIp=first, InstanceId=other)
        assert wait_until(lambda: cc.elastic == {second: iid, first: other})
        cc.instances[bare]["public_ip"] = first  # stale: the CC's listing says bare has it too
        polls = cc.calls.count(("GET", "/cluster/instances"))
        assert wait_until(lambda: cc.calls.count(("GET", "/cluster/instances")) > polls + 5)
        assert ("DELETE", f"/cluster/addresses/{first}") not in cc.calls and cc.elastic[first] == other


def test_a_second_address_on_an_instance_disassociates_the_first_in_the_store(tmp_path):
    store = Store(tmp_path / "clc.db")
    for op in OPS[:8]:
        store.apply(op)
    store.apply({"type": "address.allocate", "ip": "10.0.128.2", "account": "111111111111",
                 "allocation_id": "eipalloc-0000000b"})
    store.apply({"type": "address.associate", "ip": "10.0.128.2", "instance": "i-0000000a",
                 "association_id": "eipassoc-0000000b"})
    assert [tuple(r) for r in store.q("SELECT public_ip, instance FROM addresses ORDER BY public_ip")] == [
        ("10.0.128.1", None), ("10.0.128.2", "i-0000000a")]
    assert store.one("SELECT public_ip FROM instances WHERE id='i-0000000a'")[0] == "10.0.128.2"


def test_retiring_keeps_live_instances_and_replays_the_same(tmp_path):
    a, b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    for op in OPS[:6]:
        a.apply(op)
    a.apply({"type": "instance.update", "id": "i-0000000a", "state": "terminated", "time": 10.0})
    a.apply({"type": "instances.retire", "ids": ["i-0000000a"]})
    assert a.q("SELECT id FROM instances") == []
    b.apply_ops(a.export_ops(0))
    assert b.q("SELECT id FROM instances") == []
    # A live instance named in a retire op stays.
    for op in OPS[4:6]:
        b.apply(op)
    b.apply({"type": "instances.retire", "ids": ["i-0000000a"]})
    assert [r[0] for r in b.q("SELECT id FROM instances")] == ["i-0000000a"]


def _controller(tmp_path):
    """A CLC in this process, its cluster tier replaced by ``run`` and ``terminate`` stand-ins."""
    ctl = clc_service.CloudController({"host": "clc1", "data_dir": str(tmp_path), "admin": ADMIN,
                                       "internal_token": TOKEN, "zones": ["cluster1"]})
    ctl._apply({"type": "image.register", "id": "emi-0000000a", "account": ADMIN["account_id"], "location": "b/k",
                "name": "k", "time": 1.0})
    ctl.terminated = []

    async def run(zone, instances, min_count=1):  # the CC places the first only (capacity)
        return [{"id": instances[0]["id"], "ip": "10.1.0.2", "nc": "nc1", "slot": "s1", "state": "pending"}]

    async def terminate(zone, iid):
        ctl.terminated.append(iid)

    ctl.cluster.run, ctl.cluster.terminate = run, terminate
    return ctl


RUN = Params({"ImageId": "emi-0000000a", "MinCount": "1", "MaxCount": "3"})


def test_the_ids_of_a_run_are_released_whatever_the_cc_placed(tmp_path):
    ctl = _controller(tmp_path)
    result = asyncio.run(ctl.instances.act_RunInstances(RUN, ADMIN["account_id"]))
    assert len(result["instancesSet"]) == 1
    assert ctl.instances._reserved_ids == set() and ctl.instances._launching == {}


def test_a_run_that_cannot_be_recorded_is_withdrawn_from_the_cc(tmp_path, monkeypatch):
    ctl = _controller(tmp_path)
    apply = ctl.store.apply

    def failing(op, **kw):
        if op["type"] == "instances.create":
            raise sqlite3.IntegrityError("UNIQUE constraint failed: instances.id")
        return apply(op, **kw)

    monkeypatch.setattr(ctl.store, "apply", failing)
    with pytest.raises(sqlite3.IntegrityError):
        asyncio.run(ctl.instances.act_RunInstances(RUN, ADMIN["account_id"]))
    assert len(ctl.terminated) == 1 and ctl.store.q("SELECT id FROM instances") == []
    assert ctl.instances._reserved_ids == set() and ctl.instances._launching == {}
