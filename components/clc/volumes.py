"""EBS volumes: Create, Attach, Detach, Delete and Describe, each done at the
zone's cluster (CC, SC, NC) before it is recorded.
"""

from __future__ import annotations

import time

from .cluster import ClusterError
from .ec2 import EC2Error, Params, check_id, iso, named, new_id
from .manager import Manager


class Volumes(Manager):
    """EBS volumes."""

    def _volume(self, account: str, vid: str):
        check_id("volume", vid)
        row = self.store.one("SELECT * FROM volumes WHERE id=? AND account=?", vid, account)
        if row is None:
            raise EC2Error("InvalidVolume.NotFound", f"The volume '{vid}' does not exist.")
        return row

    def _volume_item(self, r) -> dict:
        item = {"volumeId": r["id"], "size": r["size"], "availabilityZone": r["zone"], "status": r["state"],
                "createTime": iso(r["created"]), "volumeType": "standard", "attachmentSet": []}
        if r["instance"]:
            item["attachmentSet"].append({"volumeId": r["id"], "instanceId": r["instance"], "device": r["device"],
                                          "status": r["attach_state"], "attachTime": iso(r["attached"] or r["created"]),
                                          "deleteOnTermination": False})
        return item

    async def act_CreateVolume(self, p: Params, account: str) -> dict:
        size = p.int("Size", low=1, high=int(self.config.get("max_volume_gib", 1024)))
        zone = p.req("AvailabilityZone")
        if zone not in self.clc.zones:
            raise EC2Error("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
        vid = new_id("vol")
        try:
            await self.cluster.create_volume(zone, vid, size)
        except ClusterError as exc:
            raise EC2Error(exc.code, exc.message, exc.status) from None
        self._apply({"type": "volume.create", "id": vid, "account": account, "size": size, "zone": zone,
                     "state": "available", "time": time.time()})
        return self._volume_item(self._volume(account, vid))

    async def act_AttachVolume(self, p: Params, account: str) -> dict:
        vol = self._volume(account, p.req("VolumeId"))
        inst = self.clc.instances.owned(account, [p.req("InstanceId")])[0]
        device = p.req("Device")
        if vol["state"] != "available":
            raise EC2Error("VolumeInUse", f"{vol['id']} is already attached to an instance")
        if inst["zone"] != vol["zone"]:
            raise EC2Error("InvalidVolume.ZoneMismatch", "The volume is not in the same availability zone as the instance")
        if inst["state"] != "running":
            raise EC2Error("IncorrectState", f"Instance '{inst['id']}' is not 'running'.")
        try:
            await self.cluster.attach_volume(vol["zone"], vol["id"], inst["id"])
        except ClusterError as exc:
            raise EC2Error(exc.code, exc.message, exc.status) from None
        now = time.time()
        self._apply({"type": "volume.update", "id": vol["id"], "state": "in-use", "instance": inst["id"],
                     "device": device, "attach_state": "attached", "attached": now})
        return {"volumeId": vol["id"], "instanceId": inst["id"], "device": device, "status": "attached",
                "attachTime": iso(now)}

    async def act_DetachVolume(self, p: Params, account: str) -> dict:
        vol = self._volume(account, p.req("VolumeId"))
        if not vol["instance"]:
            raise EC2Error("IncorrectState", f"Volume '{vol['id']}' is in the 'available' state.")
        await self.detach(vol)
        return {"volumeId": vol["id"], "instanceId": vol["instance"], "device": vol["device"], "status": "detached",
                "attachTime": iso(vol["attached"] or vol["created"])}

    async def detach(self, vol) -> None:
        """Detach a volume at its cluster (the NC's session and the SC's export end), then here."""
        try:
            await self.cluster.detach_volume(vol["zone"], vol["id"], vol["instance"])
        except ClusterError as exc:
            raise EC2Error(exc.code, exc.message, exc.status) from None
        self._apply({"type": "volume.update", "id": vol["id"], "state": "available", "instance": None,
                     "device": None, "attach_state": None, "attached": None})

    async def act_DeleteVolume(self, p: Params, account: str) -> dict:
        vol = self._volume(account, p.req("VolumeId"))
        if vol["instance"]:
            raise EC2Error("VolumeInUse", f"Volume {vol['id']} is currently attached to {vol['instance']}")
        try:
            await self.cluster.delete_volume(vol["zone"], vol["id"])
        except ClusterError as exc:
            raise EC2Error(exc.code, exc.message, exc.status) from None
        self._apply({"type": "volume.delete", "id": vol["id"]})
        return {"return": True}

    async def act_DescribeVolumes(self, p: Params, account: str) -> dict:
        ids = [check_id("volume", v) for v in p.list("VolumeId")]
        rows = named(self.store.q("SELECT * FROM volumes WHERE account=? ORDER BY created", account), ids,
                     lambda missing: EC2Error("InvalidVolume.NotFound", f"The volume '{missing[0]}' does not exist."))
        return {"volumeSet": [self._volume_item(r) for r in rows]}
