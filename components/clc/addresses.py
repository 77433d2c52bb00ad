"""Elastic IPs: Allocate (from the cloud's public pool, within the account's
quota), Associate, Disassociate, Release and Describe, each change made at the
instance's CC before it is recorded.
"""

from __future__ import annotations

import collections
import contextlib

from .ec2 import EC2Error, Params, check_id, new_id
from .manager import Manager


class Addresses(Manager):
    """Elastic IPs."""

    def __init__(self, clc):
        super().__init__(clc)
        # Instances whose elastic IP a request is changing right now (the sync leaves them alone).
        self.busy: collections.Counter[str] = collections.Counter()

    def _address(self, account: str, ip: str | None, allocation: str | None):
        if allocation:
            check_id("allocation", allocation)
            row = self.store.one("SELECT * FROM addresses WHERE allocation_id=?", allocation)
            if row is None or row["account"] != account:
                raise EC2Error("InvalidAllocationID.NotFound", f"The allocation ID '{allocation}' does not exist")
            return row
        if not ip:
            raise EC2Error("MissingParameter", "The request must contain the parameter PublicIp or AllocationId")
        row = self.store.one("SELECT * FROM addresses WHERE public_ip=?", ip)
        if row is None or row["account"] != account:
            raise EC2Error("AuthFailure" if row else "InvalidAddress.NotFound",
                           f"The address '{ip}' does not belong to you" if row else f"Address '{ip}' not found.",
                           400)
        return row

    async def act_AllocateAddress(self, p: Params, account: str) -> dict:
        self._require("elastic_ips", "elastic IPs")
        held = self.store.one("SELECT COUNT(*) FROM addresses WHERE account=?", account)[0]
        if held >= self.clc.quotas["elastic_ips"]:
            raise EC2Error("AddressLimitExceeded", f"The maximum number of addresses ({self.clc.quotas['elastic_ips']}) "
                           "has been reached.")
        used = {r["public_ip"] for r in self.store.q("SELECT public_ip FROM addresses")}
        free = [ip for ip in self.clc.public_pool if ip not in used]
        if not free:
            raise EC2Error("AddressLimitExceeded", "Too many addresses allocated")
        alloc = new_id("eipalloc")
        self._apply({"type": "address.allocate", "ip": free[0], "account": account, "allocation_id": alloc})
        return {"publicIp": free[0], "domain": p.get("Domain") or "standard", "allocationId": alloc}

    async def act_AssociateAddress(self, p: Params, account: str) -> dict:
        self._require("elastic_ips", "elastic IPs")
        row = self._address(account, p.get("PublicIp"), p.get("AllocationId"))
        inst = self.clc.instances.owned(account, [p.req("InstanceId")])[0]
        if inst["state"] not in ("pending", "running"):
            raise EC2Error("IncorrectInstanceState", f"The instance '{inst['id']}' is not in a valid state")
        assoc = new_id("eipassoc")
        with self._changing_addresses(inst["id"], row["instance"]):
            await self.cluster.associate(inst["zone"], row["public_ip"], inst["id"])
            self._apply({"type": "address.associate", "ip": row["public_ip"], "instance": inst["id"],
                         "association_id": assoc})
        return {"return": True, "associationId": assoc}

    @contextlib.contextmanager
    def _changing_addresses(self, *instances: str | None):
        """Mark instances whose elastic IP a request changes, for the sync's repair to leave alone."""
        busy = [i for i in instances if i]
        self.busy.update(busy)
        try:
            yield
        finally:
            self.busy.subtract(busy)
            self.busy += collections.Counter()  # drop the zeros

    async def act_DisassociateAddress(self, p: Params, account: str) -> dict:
        self._require("elastic_ips", "elastic IPs")
        assoc = p.get("AssociationId")
        if assoc:
            check_id("association", assoc)
            row = self.store.one("SELECT * FROM addresses WHERE association_id=? AND account=?", assoc, account)
            if row is None:
                raise EC2Error("InvalidAssociationID.NotFound", f"The association ID '{assoc}' does not exist")
        else:
            row = self._address(account, p.req("PublicIp"), None)
        with self._changing_addresses(row["instance"]):
            await self._disassociate_on_cluster(row)
            self._apply({"type": "address.disassociate", "ip": row["public_ip"]})
        return {"return": True}

    async def _disassociate_on_cluster(self, row) -> None:
        """Tell the CC of the instance an address row names (if any) to let go of the address."""
        if row["instance"]:
            inst = self.store.one("SELECT zone FROM instances WHERE id=?", row["instance"])
            if inst is not None:
                await self.cluster.disassociate(inst["zone"], row["public_ip"])

    async def act_ReleaseAddress(self, p: Params, account: str) -> dict:
        row = self._address(account, p.get("PublicIp"), p.get("AllocationId"))
        with self._changing_addresses(row["instance"]):
            await self._disassociate_on_cluster(row)
            self._apply({"type": "address.release", "ip": row["public_ip"]})
        return {"return": True}

    async def act_DescribeAddresses(self, p: Params, account: str) -> dict:
        rows = self.store.q("SELECT a.*, i.private_ip FROM addresses a LEFT JOIN instances i ON a.instance=i.id "
                            "WHERE a.account=? ORDER BY a.public_ip", account)
        ips, allocs = p.list("PublicIp"), p.list("AllocationId")
        for ip in ips:
            if ip not in {r["public_ip"] for r in rows}:
                raise EC2Error("InvalidAddress.NotFound", f"Address '{ip}' not found.")
        if ips or allocs:
            rows = [r for r in rows if r["public_ip"] in ips or r["allocation_id"] in allocs]
        return {"addressesSet": [{"publicIp": r["public_ip"], "allocationId": r["allocation_id"], "domain": "standard",
                                  "instanceId": r["instance"], "associationId": r["association_id"],
                                  "privateIpAddress": r["private_ip"] if r["instance"] else None} for r in rows]}
