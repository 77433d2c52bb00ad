"""The CC's side of the CLC's group check: one digest per group it holds, equal to the
digest of the record the CLC sent (components/common/groups.py)."""

from __future__ import annotations

import asyncio

from components.cc import router
from components.cc.service import ClusterController
from components.common.groups import digest


def test_the_cc_answers_a_digest_per_group_it_holds(tmp_path, monkeypatch):
    from aiohttp.test_utils import TestClient, TestServer

    from components.common.service import INTERNAL_TOKEN_HEADER

    sent = {"id": "sg-1", "name": "web", "account": "123456789012",
            "rules": [{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/8"}]}

    async def apply(config, primary, armed=False, inline=False, announce_held=False):  # no namespace to route in
        return {"added": [], "announced": {}}

    monkeypatch.setattr(router, "apply_router_async", apply)

    async def main():
        cc = ClusterController({"host": "c1cc1", "data_dir": str(tmp_path), "cluster": 1, "mode": "MANAGED",
                                "ncs": {}, "internal_token": "t", "port": 9,
                                "private_interface": "c1cc1-eth1", "public_interface": "c1cc1-eth0"})
        client = TestClient(TestServer(cc.app))
        await client.start_server()
        try:
            auth = {INTERNAL_TOKEN_HEADER: "t"}
            assert (await client.get("/cluster/groups")).status == 403  # internal only
            assert await (await client.get("/cluster/groups", headers=auth)).json() == {"groups": {}}
            assert (await client.put("/cluster/groups/sg-1", json=sent, headers=auth)).status == 200
            held = (await (await client.get("/cluster/groups", headers=auth)).json())["groups"]
            assert held == {"sg-1": digest(sent)}
            changed = {**sent, "rules": []}
            assert held["sg-1"] != digest(changed)
            assert digest(dict(reversed(list(sent.items())))) == digest(sent)  # key order does not matter
        finally:
            await client.close()

    asyncio.run(main())
