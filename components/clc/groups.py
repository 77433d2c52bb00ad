"""Security groups and their rules: Create, Delete, Describe, Authorize and Revoke
(ingress), each change sent to the CCs; a group as a CC holds it, and the groups a CC
lacks or holds differently sent again (the sync calls ``resend``).
"""

from __future__ import annotations

import ipaddress
import json

from components.common.groups import digest as group_digest

from .ec2 import EC2Error, Params, check_id, new_id, sub_list
from .manager import Manager

PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp", "-1": "-1"}


class SecurityGroups(Manager):
    """Security groups, their rules, and their copies at the CCs."""

    def find(self, account: str, group_id: str | None = None, name: str | None = None):
        if group_id:
            check_id("group", group_id)
            row = self.store.one("SELECT * FROM groups WHERE id=? AND account=?", group_id, account)
            shown = group_id
        else:
            row = self.store.one("SELECT * FROM groups WHERE name=? AND account=?", name, account)
            shown = name
        if row is None:
            raise EC2Error("InvalidGroup.NotFound", f"The security group '{shown}' does not exist")
        return row

    def _named(self, p: Params, account: str):
        """The group a request names by GroupId or GroupName (MissingParameter GroupId without either)."""
        return self.find(account, p.get("GroupId"), p.get("GroupName") or (None if p.get("GroupId") else
                                                                           p.req("GroupId")))

    def _group_info(self, row) -> dict:
        perms = []
        for r in self.store.q("SELECT * FROM rules WHERE group_id=? ORDER BY protocol, from_port, cidr", row["id"]):
            perm = {"ipProtocol": r["protocol"], "groups": [], "ipRanges": [], "ipv6Ranges": [],
                    "prefixListIds": []}
            if r["protocol"] != "-1":
                perm["fromPort"], perm["toPort"] = r["from_port"], r["to_port"]
            if r["cidr"]:
                perm["ipRanges"].append({"cidrIp": r["cidr"]})
            if r["source_group"]:
                perm["groups"].append({"userId": row["account"], "groupId": r["source_group"]})
            perms.append(perm)
        return {"ownerId": row["account"], "groupId": row["id"], "groupName": row["name"],
                "groupDescription": row["description"], "ipPermissions": perms,
                "ipPermissionsEgress": [{"ipProtocol": "-1", "groups": [], "ipRanges": [{"cidrIp": "0.0.0.0/0"}],
                                         "ipv6Ranges": [], "prefixListIds": []}]}

    async def act_CreateSecurityGroup(self, p: Params, account: str) -> dict:
        name, desc = p.req("GroupName"), p.req("GroupDescription")
        if len(name) > 255 or len(desc) > 255:
            raise EC2Error("InvalidParameterValue", "group name and description are at most 255 characters")
        if self.store.one("SELECT 1 FROM groups WHERE account=? AND name=?", account, name):
            raise EC2Error("InvalidGroup.Duplicate", f"The security group '{name}' already exists")
        held = self.store.one("SELECT COUNT(*) FROM groups WHERE account=?", account)[0]
        if held >= self.clc.quotas["security_groups"]:
            raise EC2Error("SecurityGroupLimitExceeded", f"The maximum number of security groups "
                           f"({self.clc.quotas['security_groups']}) has been reached.")
        gid = new_id("sg")
        self._apply({"type": "group.create", "id": gid, "account": account, "name": name, "description": desc})
        return {"return": True, "groupId": gid}

    async def act_DeleteSecurityGroup(self, p: Params, account: str) -> dict:
        row = self._named(p, account)
        if row["name"] == "default":
            raise EC2Error("CannotDelete", "the default security group cannot be deleted")
        for inst in self.store.q("SELECT groups FROM instances WHERE account=? AND state!='terminated'", account):
            if row["id"] in json.loads(inst["groups"]):
                raise EC2Error("InvalidGroup.InUse", f"There are active instances using security group '{row['name']}'")
        if self.store.one("SELECT 1 FROM rules WHERE source_group=? AND group_id!=?", row["id"], row["id"]):
            raise EC2Error("DependencyViolation", f"resource {row['id']} has a dependent object")
        self._apply({"type": "group.delete", "id": row["id"]})
        return {"return": True}

    async def act_DescribeSecurityGroups(self, p: Params, account: str) -> dict:
        ids, names = p.list("GroupId"), p.list("GroupName")
        rows = self.store.q("SELECT * FROM groups WHERE account=? ORDER BY name", account)
        for gid in ids:
            check_id("group", gid)
            if gid not in {r["id"] for r in rows}:
                raise EC2Error("InvalidGroup.NotFound", f"The security group '{gid}' does not exist")
        for name in names:
            if name not in {r["name"] for r in rows}:
                raise EC2Error("InvalidGroup.NotFound", f"The security group '{name}' does not exist")
        if ids or names:
            rows = [r for r in rows if r["id"] in ids or r["name"] in names]
        return {"securityGroupInfo": [self._group_info(r) for r in rows]}

    def _parse_permissions(self, p: Params, account: str) -> list[dict]:
        """IpPermissions.N.* (or the older top-level IpProtocol/FromPort/ToPort/CidrIp form) as rules."""
        rules = []
        perms = p.structs("IpPermissions")
        if not perms and p.get("IpProtocol"):
            legacy = {k: p.get(k) for k in ("IpProtocol", "FromPort", "ToPort") if p.get(k) is not None}
            if p.get("CidrIp"):
                legacy["IpRanges.1.CidrIp"] = p.get("CidrIp")
            if p.get("SourceSecurityGroupName"):
                legacy["Groups.1.GroupName"] = p.get("SourceSecurityGroupName")
            perms = [legacy]
        if not perms:
            raise EC2Error("MissingParameter", "The request must contain the parameter IpPermissions")
        for perm in perms:
            proto_raw = (perm.get("IpProtocol") or "").lower()
            proto = PROTOCOLS.get(proto_raw)
            if proto is None:
                raise EC2Error("InvalidParameterValue", f"Invalid value '{proto_raw}' for IP protocol")
            default = "-1" if proto in ("icmp", "-1") else ""
            ports = Params({k: perm.get(k, default) for k in ("FromPort", "ToPort")})
            lo, hi = ports.int("FromPort", low=-1, high=65535), ports.int("ToPort", low=-1, high=65535)
            if proto in ("tcp", "udp") and not (0 <= lo <= hi <= 65535):
                raise EC2Error("InvalidParameterValue", f"Invalid port range {lo}-{hi}")
            # For ICMP the "ports" are the ICMP type and code, -1 meaning all.
            if proto == "icmp" and not (-1 <= lo <= 255 and -1 <= hi <= 255):
                raise EC2Error("InvalidParameterValue", f"Invalid ICMP type {lo} or code {hi}")
            if proto == "-1":
                lo, hi = -1, -1
            cidrs = [r.get("CidrIp", "") for r in sub_list(perm, "IpRanges")]
            sources = []
            for g in sub_list(perm, "Groups"):
                if g.get("GroupId"):
                    sources.append(self.find(account, group_id=g["GroupId"])["id"])
                elif g.get("GroupName"):
                    sources.append(self.find(account, name=g["GroupName"])["id"])
                else:
                    raise EC2Error("MissingParameter", "a source group needs GroupId or GroupName")
            if not cidrs and not sources:
                raise EC2Error("MissingParameter", "a permission needs IpRanges or source groups")
            for cidr in cidrs:
                try:
                    net = ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise EC2Error("InvalidParameterValue", f"Value ({cidr}) for parameter cidrIp is invalid") from None
                if net.version != 4:
                    raise EC2Error("InvalidParameterValue", f"Value ({cidr}) for parameter cidrIp is not IPv4")
                rules.append({"protocol": proto, "from_port": lo, "to_port": hi, "cidr": str(net), "source_group": ""})
            for src in sources:
                rules.append({"protocol": proto, "from_port": lo, "to_port": hi, "cidr": "", "source_group": src})
        return rules

    def _rule_exists(self, gid: str, r: dict) -> bool:
        return self.store.one("SELECT 1 FROM rules WHERE group_id=? AND protocol=? AND from_port=? AND to_port=? "
                              "AND cidr=? AND source_group=?", gid, r["protocol"], r["from_port"], r["to_port"],
                              r["cidr"], r["source_group"]) is not None

    async def act_AuthorizeSecurityGroupIngress(self, p: Params, account: str) -> dict:
        return await self._change_rules(p, account, "rules.add", EC2Error(
            "InvalidPermission.Duplicate", "the specified rule already exists"))

    async def act_RevokeSecurityGroupIngress(self, p: Params, account: str) -> dict:
        return await self._change_rules(p, account, "rules.revoke", EC2Error(
            "InvalidPermission.NotFound", "the specified rule does not exist in this group"))

    async def _change_rules(self, p: Params, account: str, op_type: str, refused: EC2Error) -> dict:
        """Add (``rules.add``) or revoke (``rules.revoke``) a group's rules, then send the group
        to the CCs; ``refused`` when a rule is already there, or not there, respectively."""
        self._require("security_groups", "security group rules")
        row = self._named(p, account)
        rules = self._parse_permissions(p, account)
        for r in rules:
            if self._rule_exists(row["id"], r) == (op_type == "rules.add"):
                raise refused
        self._apply({"type": op_type, "group": row["id"], "rules": rules})
        await self.cluster.push_group(self.for_cluster(row))
        return {"return": True}

    async def resend(self) -> None:
        held = await self.cluster.group_digests()
        if not held:
            return
        for g in self.store.q("SELECT * FROM groups"):
            group = self.for_cluster(g)
            want = group_digest(group)
            stale = [zone for zone, digests in held.items() if digests.get(group["id"]) != want]
            if stale:
                await self.cluster.push_group(group, stale)

    def for_cluster(self, row) -> dict:
        rules = [{"protocol": r["protocol"], "from_port": r["from_port"], "to_port": r["to_port"],
                  **({"cidr": r["cidr"]} if r["cidr"] else {}),
                  **({"source_group": r["source_group"]} if r["source_group"] else {})}
                 for r in self.store.q("SELECT * FROM rules WHERE group_id=?", row["id"])]
        return {"id": row["id"], "name": row["name"], "account": row["account"], "rules": rules}

    def names(self, account: str) -> dict[str, str]:
        return {g["id"]: g["name"] for g in self.store.q("SELECT id, name FROM groups WHERE account=?", account)}
