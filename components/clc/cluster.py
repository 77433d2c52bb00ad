"""The CLC's side of the cluster tier: instance work to the zone's CC, volume work to its SC.

The CLC never talks to NCs (as in Eucalyptus): volume attachments go CLC -> SC
(export) and CLC -> CC -> NC (the NC opens its block session to the SC).
A zone whose CC is not configured leaves instances pending (no cluster tier: the
CLC alone); one whose CC does not answer (its capacity call) refuses new instances with
a 503 ServiceUnavailable, which EC2 clients retry, rather than recording instances no CC
will ever be asked to start. A zone without an SC keeps volumes as bookkeeping only.
"""

from __future__ import annotations

import asyncio

import aiohttp

from components.common.service import INTERNAL_TOKEN_HEADER


class ClusterError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        self.code, self.message, self.status = code, message, status
        super().__init__(message)


class ClusterClient:
    def __init__(self, config: dict, zones: list[str]):
        endpoints = config.get("endpoints") or {}
        self.cc = {z: u.rstrip("/") for z, u in (endpoints.get("cc") or {}).items() if z in zones}
        self.sc = {z: u.rstrip("/") for z, u in (endpoints.get("sc") or {}).items() if z in zones}
        self.token = config.get("internal_token", "")
        self.timeout = float(config.get("cluster_timeout_s", 5.0))
        # A run's answer waits on the CC's intent push and its NCs' hand-off: milliseconds,
        # seconds with the SDN controller stalled (components/cc/nodes.py HANDOFF_S). A
        # run not answered in time is withdrawn (``run``).
        self.run_timeout = float(config.get("cluster_run_timeout_s", 15.0))
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(headers={INTERNAL_TOKEN_HEADER: self.token},
                                          timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def close(self) -> None:
        if self.http:
            await self.http.close()

    async def _call(self, method: str, url: str, body: dict | None = None, timeout: float | None = None) -> dict:
        extra = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout else {}  # else the session's
        try:
            async with self.http.request(method, url, json=body, **extra) as r:
                data = await r.json(content_type=None)
                if r.status >= 300:
                    raise ClusterError(data.get("error", "InternalError"), data.get("message", str(data)),
                                       500 if r.status >= 500 else 400)
                return data
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise ClusterError("Unavailable", f"{url}: {exc or type(exc).__name__}", 503) from None

    # -- instances ----------------------------------------------------------------------------

    async def run(self, zone: str, instances: list[dict], min_count: int = 1) -> list[dict] | None:
        """Place instances in the zone (as many as fit, at least ``min_count``); None: the
        zone has no CC. A CC that does not answer its capacity call is ClusterError
        ServiceUnavailable (503): nothing was placed, and the client may try again."""
        base = self.cc.get(zone)
        if base is None:
            return None
        try:
            cap = await self._call("GET", f"{base}/cluster/capacity")
        except ClusterError as exc:
            if exc.code == "Unavailable":
                raise ClusterError("ServiceUnavailable", f"The cluster controller of {zone} does not answer; "
                                   "nothing was started, try again", 503) from None
            raise
        n = min(len(instances), int(cap.get("free", 0)))
        if n < min_count:
            raise ClusterError("InsufficientInstanceCapacity",
                               f"There is not enough capacity in {zone} ({cap.get('free', 0)} free VM slot(s)) "
                               f"to fulfill the request for {min_count} instance(s)", 400)
        try:
            answer = await self._call("POST", f"{base}/cluster/instances", {"instances": instances[:n]},
                                      timeout=self.run_timeout)
        except ClusterError as exc:
            if exc.code == "Unavailable":
                # No answer: the CC may have taken the run all the same, and its instances
                # would run unrecorded here. Withdraw it (a CC that never got it answers 404).
                await asyncio.gather(*(self.terminate(zone, i["id"]) for i in instances[:n]))
            raise
        return answer["placements"]

    async def describe(self, zone: str) -> dict[str, dict] | None:
        base = self.cc.get(zone)
        if base is None:
            return None
        try:
            data = await self._call("GET", f"{base}/cluster/instances")
        except ClusterError:
            return None
        return {i["id"]: i for i in data.get("instances", [])}

    async def terminate(self, zone: str, instance: str) -> None:
        base = self.cc.get(zone)
        if base is None:
            return
        try:
            await self._call("DELETE", f"{base}/cluster/instances/{instance}")
        except ClusterError:
            pass  # not known there (never placed) or the CC is down: terminated here all the same

    async def push_group(self, group: dict, zones: list[str] | None = None) -> None:
        """A group's rules changed: every CC (or those of ``zones``) enforces them for its
        instances of the group."""
        bases = [self.cc[z] for z in (self.cc if zones is None else zones) if z in self.cc]
        await asyncio.gather(*(self._quiet("PUT", f"{base}/cluster/groups/{group['id']}", group)
                               for base in bases))

    async def group_digests(self) -> dict[str, dict[str, str]]:
        """Per zone, the digest of every group its CC holds (components/common/groups.py);
        a CC that does not answer is left out."""
        async def held(zone: str):
            try:
                return zone, (await self._call("GET", f"{self.cc[zone]}/cluster/groups")).get("groups", {})
            except ClusterError:
                return zone, None
        return {z: d for z, d in await asyncio.gather(*(held(z) for z in self.cc)) if d is not None}

    async def _quiet(self, method: str, url: str, body: dict | None = None) -> None:
        try:
            await self._call(method, url, body)
        except ClusterError:
            pass

    async def associate(self, zone: str, ip: str, instance: str) -> None:
        if zone in self.cc:
            await self._call("PUT", f"{self.cc[zone]}/cluster/addresses/{ip}", {"instance": instance})

    async def disassociate(self, zone: str, ip: str) -> None:
        if zone in self.cc:
            await self._quiet("DELETE", f"{self.cc[zone]}/cluster/addresses/{ip}")

    # -- volumes --------------------------------------------------------------------------------

    async def create_volume(self, zone: str, volume: str, size_gib: int) -> None:
        # Sizes are GiB in the API; the SC stores MiB-sized sparse files (a GiB of the
        # API is a MiB here, so experiments need no disk space).
        if zone in self.sc:
            await self._call("POST", f"{self.sc[zone]}/volumes", {"id": volume, "size_mib": size_gib})

    async def delete_volume(self, zone: str, volume: str) -> None:
        if zone in self.sc:
            await self._call("DELETE", f"{self.sc[zone]}/volumes/{volume}")

    async def attach_volume(self, zone: str, volume: str, instance: str) -> None:
        if zone not in self.sc or zone not in self.cc:
            return
        nc = None
        view = await self.describe(zone)
        if view and instance in view:
            nc = view[instance].get("nc")
        export = await self._call("POST", f"{self.sc[zone]}/volumes/{volume}/attach",
                                  {"instance": instance, "nc": nc})
        try:
            await self._call("POST", f"{self.cc[zone]}/cluster/instances/{instance}/volumes",
                             {"volume": volume, "target": export["target"]})
        except ClusterError:
            await self._quiet("POST", f"{self.sc[zone]}/volumes/{volume}/detach")
            raise

    async def detach_volume(self, zone: str, volume: str, instance: str) -> None:
        if zone in self.cc:
            await self._quiet("DELETE", f"{self.cc[zone]}/cluster/instances/{instance}/volumes/{volume}")
        if zone in self.sc:
            await self._call("POST", f"{self.sc[zone]}/volumes/{volume}/detach")
