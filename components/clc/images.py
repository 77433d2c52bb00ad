"""Zones and machine images: DescribeAvailabilityZones, RegisterImage (the image
object read in Walrus with the caller's own key first), DescribeImages and the launch
permission attribute.
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import quote, urlsplit

from components.common.names import valid_bucket, valid_key
from components.common.sigv4 import sign

from .ec2 import EC2Error, Params, check_id, named, new_id
from .manager import Manager

IMAGE_NAME = re.compile(r"[A-Za-z0-9()\[\] ./'@_-]{3,128}")  # EC2's rule for AMI names
WALRUS_CHECK_S = 2.0  # RegisterImage's read check of the image object


class Images(Manager):
    """Zones and machine images."""

    async def act_DescribeAvailabilityZones(self, p: Params, account: str) -> dict:
        wanted = set(p.list("ZoneName"))
        return {"availabilityZoneInfo": [{"zoneName": z, "zoneState": "available", "regionName":
                                          self.config.get("region", "eucalyptus"), "messageSet": []}
                                         for z in self.clc.zones if not wanted or z in wanted]}

    async def _may_read(self, account: str, bucket: str, key: str) -> bool:
        """Whether ``account`` may read ``bucket/key`` in Walrus: a HEAD signed with the
        account's own key, as EC2 reads an image's manifest with the caller's permissions."""
        import aiohttp

        walrus = (self.config.get("endpoints") or {}).get("walrus")
        row = self.store.one("SELECT access_key, secret_key FROM accounts WHERE id=?", account)
        if not walrus or row is None:
            raise EC2Error("ServiceUnavailable", "the object store is not configured", 503)
        url = urlsplit(walrus)
        path = f"{url.path.rstrip('/')}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
        headers = sign("HEAD", path, "", url.netloc, row["access_key"], row["secret_key"],
                       self.config.get("region", "eucalyptus"), "s3")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WALRUS_CHECK_S)) as http:
                async with http.head(f"{url.scheme}://{url.netloc}{path}", headers=headers) as r:
                    if r.status in (200, 403, 404):
                        return r.status == 200
                    problem = f"Walrus answered {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            problem = f"Walrus cannot be reached: {exc!r}"
        raise EC2Error("ServiceUnavailable", f"cannot check the image location now ({problem})", 503)

    def visible(self, account: str, image_id: str):
        """An image ``account`` may see (its own or a public one); another account's private
        image is answered exactly as one that does not exist."""
        row = self.store.one("SELECT * FROM images WHERE id=? AND (account=? OR public=1)", image_id, account)
        if row is None:
            raise EC2Error("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        return row

    async def act_RegisterImage(self, p: Params, account: str) -> dict:
        location = p.req("ImageLocation")
        bucket, _, key = location.partition("/")
        if not valid_bucket(bucket) or not valid_key(key):
            raise EC2Error("InvalidParameterValue", "ImageLocation must be bucket/key")
        name = p.get("Name") or key
        if not IMAGE_NAME.fullmatch(name):
            raise EC2Error("InvalidParameterValue", f"Invalid image name {name!r}: 3 to 128 letters, digits and "
                           "( ) [ ] space . / - ' @ _")
        # One answer whether the object is missing or someone else's: no probing of other accounts.
        if not await self._may_read(account, bucket, key):
            raise EC2Error("InvalidManifest", f"Image location {location} cannot be read with your credentials")
        iid = new_id("emi")
        self._apply({"type": "image.register", "id": iid, "account": account, "location": location,
                     "name": name, "time": time.time()})
        return {"imageId": iid}

    async def act_DescribeImages(self, p: Params, account: str) -> dict:
        ids = [check_id("image", i) for i in p.list("ImageId")]
        rows = named(self.store.q("SELECT * FROM images WHERE account=? OR public=1 ORDER BY id", account), ids,
                     lambda missing: EC2Error("InvalidAMIID.NotFound",
                                              f"The image id '[{', '.join(missing)}]' does not exist"))
        return {"imagesSet": [{"imageId": r["id"], "imageLocation": r["location"], "imageState": "available",
                               "imageOwnerId": r["account"], "isPublic": bool(r["public"]), "architecture": "x86_64",
                               "imageType": "machine", "name": r["name"], "rootDeviceType": "instance-store",
                               "virtualizationType": "hvm", "hypervisor": "kvm"} for r in rows]}

    def _own_image(self, p: Params, account: str):
        row = self.visible(account, check_id("image", p.req("ImageId")))
        if row["account"] != account:
            raise EC2Error("AuthFailure", f"Not authorized for image: {row['id']}", 401)
        return row

    async def act_DescribeImageAttribute(self, p: Params, account: str) -> dict:
        row = self._own_image(p, account)
        if p.req("Attribute") != "launchPermission":
            raise EC2Error("InvalidParameterValue", "eucalab describes the attribute launchPermission only")
        return {"imageId": row["id"], "launchPermission": [{"group": "all"}] if row["public"] else []}

    async def act_ModifyImageAttribute(self, p: Params, account: str) -> dict:
        """Launch permission for everyone (``Group=all``) added or removed; either form
        (``LaunchPermission.Add.N.Group`` or ``OperationType`` with ``UserGroup.N``)."""
        row = self._own_image(p, account)
        add = [s.get("Group") for s in p.structs("LaunchPermission.Add")]
        remove = [s.get("Group") for s in p.structs("LaunchPermission.Remove")]
        users = [s for s in p.structs("LaunchPermission.Add") + p.structs("LaunchPermission.Remove") if "UserId" in s]
        if p.get("OperationType") in ("add", "remove") and (p.get("Attribute") or "launchPermission") == \
                "launchPermission":
            (add if p.get("OperationType") == "add" else remove).extend(p.list("UserGroup"))
            users += p.list("UserId")
        if users:
            raise EC2Error("InvalidParameterValue", "eucalab grants launch permission to the group all only")
        if not add and not remove or any(g != "all" for g in add + remove):
            raise EC2Error("InvalidParameterValue", "launch permission changes must name Group=all")
        public = bool(add) and not remove
        if bool(row["public"]) != public:
            self._apply({"type": "image.launch_permission", "id": row["id"], "public": public})
        return {"return": True}
