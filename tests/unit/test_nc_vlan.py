"""The NC with ``vlan_tagging: host``: an instance's boot puts its slot's port into the
bridge of its VLAN in the NC's own namespace, its end takes it out; a run without a usable
VLAN is refused before anything changes. Commands are recorded, not run (no root)."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from components.common.config import validate_config
from components.nc.service import NodeController

TOKEN = "t0ken"


def tagged_nc(tmp_path, tagging: str = "host") -> tuple[NodeController, list]:
    nc = NodeController(validate_config({
        "host": "c1n1", "component": "nc", "port": 1, "listen_host": "127.0.0.1",
        "data_dir": str(tmp_path / "nc"), "events_path": str(tmp_path / "nc.jsonl"), "internal_token": TOKEN,
        "vlan_tagging": tagging, "private_interface": "c1n1-eth0",
        "slots": [{"name": f"c1n1v{n}", "interface": f"c1n1v{n}-eth0", "netns": f"/proc/{100 + n}/ns/net",
                   "port": f"c1n1-eth{n}"} for n in (1, 2)]}))
    ran: list = []  # (namespace: None for the NC's own, argv, stdin)
    links = {"lo", "c1n1-eth0", "c1n1-eth1", "c1n1-eth2"}

    async def in_slot(slot, *argv, stdin=None):
        ran.append((slot and slot["name"], list(argv), stdin))
        if list(argv) == ["ip", "-o", "link", "show"]:
            return "".join(f"{n}: {name}: <UP> mtu 1500\n" for n, name in enumerate(sorted(links), 1))
        for line in (stdin or "").splitlines():
            if line.startswith("link add"):
                links.add(line.split(" name ")[1].split()[0])
        return ""

    nc.slotnet.in_slot = in_slot
    return nc, ran


def inst(iid: str, slot: str, vlan: int | None) -> dict:
    return {"id": iid, "slot": slot, "vlan": vlan, "ip": "10.101.16.2", "mac": "d0:0d:0a:65:10:02",
            "prefix": 28, "gateway": "10.101.16.1", "pid": None}


def test_boot_bridges_the_slots_port_into_its_vlan_in_the_ncs_own_namespace(tmp_path):
    nc, ran = tagged_nc(tmp_path)
    asyncio.run(nc.slotnet.join_vlan(inst("i-1", "c1n1v1", 10)))
    own = [(argv, stdin) for ns, argv, stdin in ran if ns is None]
    assert own[0][0] == ["ip", "-o", "link", "show"]
    assert own[1][0] == ["ip", "-batch", "-"] and own[1][1].splitlines() == [
        "link add name eucabr10 type bridge stp_state 0",
        "link add link c1n1-eth0 name c1n1-eth0.10 type vlan id 10",
        "link set dev c1n1-eth0.10 up",
        "link set dev c1n1-eth0.10 master eucabr10",
        "link set dev c1n1-eth1 master eucabr10",
        "link set dev c1n1-eth1 up",
        "link set dev eucabr10 up"]
    assert all(ns is None for ns, _, _ in ran)  # nothing inside the slot: it stays untagged
    # A second instance of the VLAN joins the bridge the first one made.
    ran.clear()
    asyncio.run(nc.slotnet.join_vlan(inst("i-2", "c1n1v2", 10)))
    assert not [line for _, _, stdin in ran for line in (stdin or "").splitlines() if line.startswith("link add")]
    assert "link set dev c1n1-eth2 master eucabr10" in ran[-1][2]


def test_the_end_of_an_instance_releases_its_port(tmp_path):
    nc, ran = tagged_nc(tmp_path)
    asyncio.run(nc._teardown_slot(inst("i-1", "c1n1v1", 10)))
    assert ("c1n1v1", ["ip", "-batch", "-"], "addr flush dev c1n1v1-eth0\nroute flush dev c1n1v1-eth0\n") in ran
    assert (None, ["ip", "-batch", "-"], "link set dev c1n1-eth1 nomaster\n") in ran


def test_switch_tagging_leaves_the_ncs_interfaces_alone(tmp_path):
    nc, ran = tagged_nc(tmp_path, tagging="switch")
    asyncio.run(nc.slotnet.join_vlan(inst("i-1", "c1n1v1", 10)))
    asyncio.run(nc._teardown_slot(inst("i-1", "c1n1v1", 10)))
    assert [ns for ns, _, _ in ran] == ["c1n1v1"]  # only the slot's own flush


def test_a_run_without_a_vlan_is_refused_and_changes_nothing(tmp_path):
    nc, ran = tagged_nc(tmp_path)
    body = {"id": "i-1", "slot": "c1n1v1", "image": {"bucket": "b", "key": "k"}, "mac": "d0:0d:0a:65:10:02",
            "ip": "10.101.16.2", "prefix": 28, "gateway": "10.101.16.1", "group": "sg-a"}

    async def scenario():
        async with TestClient(TestServer(nc.app)) as client:
            answers = []
            for vlan in (None, 0, 4095, "10"):
                r = await client.post("/instances", json=dict(body, vlan=vlan), headers={
                    "X-Eucalab-Internal-Token": TOKEN})
                answers.append((r.status, (await r.json())["error"]))
            return answers

    assert asyncio.run(scenario()) == [(400, "InvalidParameterValue")] * 4
    assert nc.instances == {} and ran == []
