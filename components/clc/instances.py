"""Instances: RunInstances (ids reserved, the account's quota counted with the
runs in flight, the zone's CC asked first), DescribeInstances with its filters, and
TerminateInstances (volumes detached and addresses let go, as EC2 does).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time

from .cluster import ClusterError
from .ec2 import EC2Error, Params, check_id, iso, new_id
from .manager import Manager

STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
MAX_INSTANCES_PER_REQUEST = 64
# DescribeInstances filter name -> instances column (values compared as strings).
INSTANCE_FILTERS = {"instance-id": "id", "instance-state-name": "state", "availability-zone": "zone",
                    "image-id": "image", "instance-type": "type", "reservation-id": "reservation",
                    "private-ip-address": "private_ip", "ip-address": "public_ip", "key-name": "key_name"}
LIVE = "state IN ('pending', 'running', 'shutting-down')"  # instances that hold a slot and count
USER_DATA_MAX = 16 * 1024  # EC2's limit on user data, before base64


def user_data(value: str | None) -> str | None:
    """RunInstances' UserData (base64, as EC2 takes it and boto3 and the AWS CLI send it),
    checked and kept as sent; InvalidParameterValue when it is not base64 or too large."""
    if value is None:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EC2Error("InvalidParameterValue", "Invalid BASE64 encoding of user data") from None
    if len(raw) > USER_DATA_MAX:
        raise EC2Error("InvalidParameterValue", f"User data is limited to {USER_DATA_MAX} bytes")
    return value


class Instances(Manager):
    """Instances: run, describe, terminate."""

    def __init__(self, clc):
        super().__init__(clc)
        # Instance ids handed out and not yet recorded (a run waiting on its CC), per account
        # how many instances those runs hold: both count as taken.
        self._reserved_ids: set[str] = set()
        self._launching: dict[str, int] = {}

    def _instance_item(self, r, names: dict[str, str]) -> dict:
        groups = json.loads(r["groups"])
        item = {"instanceId": r["id"], "imageId": r["image"],
                "instanceState": {"code": STATE_CODES.get(r["state"], 0), "name": r["state"]},
                "privateDnsName": r["private_ip"] or "", "dnsName": r["public_ip"] or "",
                "reason": r["reason"] or "", "amiLaunchIndex": r["launch_index"], "instanceType": r["type"],
                "launchTime": iso(r["launched"]), "placement": {"availabilityZone": r["zone"], "tenancy": "default"},
                "monitoring": {"state": "disabled"},
                "privateIpAddress": r["private_ip"], "ipAddress": r["public_ip"],
                "groupSet": [{"groupId": g, "groupName": names.get(g, g)} for g in groups],
                "architecture": "x86_64", "rootDeviceType": "instance-store", "virtualizationType": "hvm",
                "hypervisor": "kvm"}
        if r["key_name"]:
            item["keyName"] = r["key_name"]
        if r["state"] == "terminated" and r["reason"]:
            item["stateReason"] = {"code": "Server.InternalError" if "fail" in r["reason"] or "corrupt" in r["reason"]
                                   else "Client.UserInitiatedShutdown", "message": r["reason"]}
        return item

    def owned(self, account: str, ids: list[str]) -> list:
        for i in ids:
            check_id("instance", i)
        rows = self.store.q("SELECT * FROM instances WHERE account=? ORDER BY launched, launch_index", account)
        if ids:
            have = {r["id"] for r in rows}
            missing = [i for i in ids if i not in have]
            if missing:
                raise EC2Error("InvalidInstanceID.NotFound",
                               f"The instance IDs '{', '.join(missing)}' do not exist")
            rows = [r for r in rows if r["id"] in ids]
        return rows

    def _new_instance_ids(self, n: int) -> list[str]:
        """``n`` fresh instance ids, each checked against the store and the runs in flight
        and reserved until its run is recorded (no await in between: nothing else can take
        one meanwhile). An id is 32 random bits as in Eucalyptus, so a collision is rare,
        not impossible; one that got through would leave instances the CC boots unrecorded."""
        ids: list[str] = []
        while len(ids) < n:
            iid = new_id("i")
            if iid in self._reserved_ids or self.store.one("SELECT 1 FROM instances WHERE id=?", iid):
                continue
            self._reserved_ids.add(iid)
            ids.append(iid)
        return ids

    def _within_instance_quota(self, account: str, lo: int, hi: int) -> int:
        """How many of MinCount..MaxCount instances the account's quota lets start (as many
        as fit, at least ``lo``), counting those not terminated and runs in flight; else
        InstanceLimitExceeded."""
        limit = self.clc.quotas["instances"]
        held = self.store.one(f"SELECT COUNT(*) FROM instances WHERE account=? AND {LIVE}", account)[0]
        room = limit - held - self._launching.get(account, 0)
        if room < lo:
            raise EC2Error("InstanceLimitExceeded", f"Your quota allows for {max(room, 0)} more running instance(s). "
                           f"You requested at least {lo}")
        return min(hi, room)

    async def act_RunInstances(self, p: Params, account: str) -> dict:
        image = check_id("image", p.req("ImageId"))
        lo = p.int("MinCount", low=1, high=MAX_INSTANCES_PER_REQUEST)
        hi = p.int("MaxCount", low=1, high=MAX_INSTANCES_PER_REQUEST)
        if lo > hi:
            raise EC2Error("InvalidParameterValue", "MinCount must not exceed MaxCount")
        img = self.clc.images.visible(account, image)
        zone = p.get("Placement.AvailabilityZone") or self.clc.zones[0]
        if zone not in self.clc.zones:
            raise EC2Error("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
        group_ids = [check_id("group", g) for g in p.list("SecurityGroupId")]
        group_ids += [self.clc.groups.find(account, name=n)["id"] for n in p.list("SecurityGroup")]
        if not group_ids:
            group_ids = [self.clc.groups.find(account, name="default")["id"]]
        groups = [self.clc.groups.find(account, group_id=g) for g in group_ids]
        itype = p.get("InstanceType") or "m1.small"
        data = user_data(p.get("UserData"))
        hi = self._within_instance_quota(account, lo, hi)
        drawn = self._new_instance_ids(hi)
        ids = list(drawn)
        reservation = new_id("r")
        bucket, _, key = img["location"].partition("/")
        self._launching[account] = self._launching.get(account, 0) + hi
        try:
            # Ask the zone's CC first: capacity decides how many start, and nothing is
            # recorded for a request the cluster refuses.
            try:
                placements = await self.cluster.run(zone, [{"id": i, "account": account,
                                                            "image": {"bucket": bucket, "key": key},
                                                            "group": self.clc.groups.for_cluster(groups[0])} for i in ids],
                                                    min_count=lo)
            except ClusterError as exc:
                raise EC2Error(exc.code, exc.message, exc.status) from None
            if placements is not None:
                ids = [pl["id"] for pl in placements]
            try:
                self._apply({"type": "instances.create", "account": account, "reservation": reservation,
                             "image": image, "zone": zone, "instance_type": itype, "groups": group_ids,
                             "time": time.time(), "key_name": p.get("KeyName"), "user_data": data,
                             "instances": [{"id": i, "launch_index": n} for n, i in enumerate(ids)]})
            except Exception:
                # Not recorded: the CC must not keep running what no account holds.
                await asyncio.gather(*(self.cluster.terminate(zone, i) for i in ids))
                raise
        finally:
            self._launching[account] -= hi
            if not self._launching[account]:
                del self._launching[account]
            self._reserved_ids.difference_update(drawn)  # recorded now, or never started
        for pl in placements or []:
            change = {"private_ip": pl["ip"], "nc": pl["nc"], "slot": pl["slot"]}
            if pl.get("state") == "terminated":  # its NC refused it or did not take it
                change.update(state="terminated", reason=pl.get("reason") or "")
            self._apply({"type": "instance.update", "id": pl["id"], **change})
        rows = self.owned(account, ids)
        names = self.clc.groups.names(account)
        return {"reservationId": reservation, "ownerId": account,
                "groupSet": [{"groupId": g["id"], "groupName": g["name"]} for g in groups],
                "instancesSet": [self._instance_item(r, names) for r in rows]}

    async def act_DescribeInstances(self, p: Params, account: str) -> dict:
        rows = self.owned(account, p.list("InstanceId"))
        for name, values in p.filters().items():
            column = INSTANCE_FILTERS.get(name)
            if column is None:
                raise EC2Error("InvalidParameterValue", f"The filter '{name}' is invalid")
            rows = [r for r in rows if r[column] in values]
        names = self.clc.groups.names(account)
        reservations: dict[str, dict] = {}
        for r in rows:
            item = self._instance_item(r, names)
            res = reservations.setdefault(r["reservation"], {"reservationId": r["reservation"], "ownerId": account,
                                                             "groupSet": item["groupSet"], "instancesSet": []})
            res["instancesSet"].append(item)
        return {"reservationSet": list(reservations.values())}

    async def act_TerminateInstances(self, p: Params, account: str) -> dict:
        ids = p.list("InstanceId")
        if not ids:
            raise EC2Error("MissingParameter", "The request must contain the parameter InstanceId")
        rows = self.owned(account, ids)
        out = []
        for r in rows:
            before = r["state"]
            if before != "terminated":
                await self.cluster.terminate(r["zone"], r["id"])
                # Its volumes are detached, as EC2 does: the SC's export and its sessions end.
                for vol in self.store.q("SELECT * FROM volumes WHERE instance=?", r["id"]):
                    try:
                        await self.clc.volumes.detach(vol)
                    except EC2Error as exc:
                        self.events.emit("volume.detach_failed", volume=vol["id"], instance=r["id"],
                                         error=exc.message)
                for a in self.store.q("SELECT public_ip FROM addresses WHERE instance=?", r["id"]):
                    self._apply({"type": "address.disassociate", "ip": a["public_ip"]})
                self._apply({"type": "instance.update", "id": r["id"], "state": "terminated",
                             "reason": "terminated by the user"})
            out.append({"instanceId": r["id"],
                        "previousState": {"code": STATE_CODES[before], "name": before},
                        "currentState": {"code": STATE_CODES["terminated"], "name": "terminated"}})
        return {"instancesSet": out}
