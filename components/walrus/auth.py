"""Who sends a Walrus request: SigV4 in the headers or the query string (a presigned URL),
or the signed policy of a browser-form POST; a request with neither is anonymous, which
only an ACL granting AllUsers lets through. Access keys are resolved at the CLC.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json

from aiohttp import web

from components.common.accounts import AccountResolver, AccountsUnavailable, access_key_of
from components.common.sigv4 import ACCESS_KEY_RE, SigV4Error, signing_key, verify

from components.walrus.s3 import S3Error

AUTH = web.RequestKey("auth", object)  # the request's AuthResult, for handlers that read a signed body


class S3Auth:
    """Checks signatures against the accounts the CLC knows."""

    def __init__(self, accounts: AccountResolver, region: str):
        self.accounts = accounts
        self.region = region

    async def _ensure(self, access_key: str | None, resource: str) -> None:
        """Learn ``access_key`` from the CLC unless it is known; 503 while the CLC cannot say."""
        try:
            await self.accounts.ensure(access_key)
        except AccountsUnavailable as exc:
            raise S3Error("ServiceUnavailable", f"cannot check the access key now: {exc}", 503, resource) from None

    async def authenticate(self, request: web.Request) -> tuple[str | None, object]:
        """(account, AuthResult) of a signed request; (None, None) for an anonymous one, which
        only an ACL granting AllUsers lets through."""
        if "Authorization" not in request.headers and not any(
                q in request.query for q in ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Algorithm")):
            return None, None
        raw_path, _, raw_query = request.raw_path.partition("?")
        access_key = access_key_of(request.headers, request.query)
        if access_key is not None and not ACCESS_KEY_RE.fullmatch(access_key):
            raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                          403, request.path)
        await self._ensure(access_key, request.path)
        try:
            auth = verify(request.method, raw_path, raw_query, request.headers, None,
                          self.accounts.lookup, dialect="s3", service="s3", region=self.region)
        except SigV4Error as exc:
            raise S3Error(exc.code, exc.message, exc.http_status, request.path) from None
        return auth.account_id, auth

    async def post_policy(self, fields: dict, bucket: str, key: str) -> tuple[str, tuple | None]:
        """The signer's account and the policy's content-length-range, once a browser form's
        policy signature, expiration and conditions hold for its fields."""
        def denied(why: str) -> S3Error:
            return S3Error("AccessDenied", f"Invalid according to Policy: {why}", 403, bucket)

        if fields.get("x-amz-algorithm") != "AWS4-HMAC-SHA256" or "policy" not in fields:
            raise S3Error("InvalidArgument", "A signed POST needs x-amz-algorithm AWS4-HMAC-SHA256 and a policy",
                          400, bucket)
        scope = fields.get("x-amz-credential", "").split("/")
        if len(scope) != 5 or scope[4] != "aws4_request" or scope[3] != "s3":
            raise S3Error("AuthorizationQueryParametersError", "x-amz-credential must be "
                          "<key>/<date>/<region>/s3/aws4_request", 400, bucket)
        await self._ensure(scope[0], bucket)
        found = self.accounts.lookup(scope[0])
        if found is None:
            raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                          403, bucket)
        secret, account = found
        expected = hmac.new(signing_key(secret, scope[1], scope[2], "s3"), fields["policy"].encode(),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields["x-amz-signature"]):
            raise S3Error("SignatureDoesNotMatch", "The request signature we calculated does not match the "
                          "signature you provided.", 403, bucket)
        try:
            policy = json.loads(base64.b64decode(fields["policy"], validate=True))
            expires = dt.datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
            conditions = policy["conditions"]
        except (ValueError, KeyError, TypeError):
            raise S3Error("InvalidPolicyDocument", "Invalid Policy: the policy is not a JSON document with an "
                          "expiration and conditions", 400, bucket) from None
        if expires < dt.datetime.now(dt.timezone.utc):
            raise denied("Policy expired.")
        values = {**fields, "bucket": bucket, "key": key}
        covered, length_range = set(), None
        for cond in conditions:
            if isinstance(cond, dict):
                checks = [("eq", k, v) for k, v in cond.items()]
            elif isinstance(cond, list) and len(cond) == 3 and str(cond[0]).lower() == "content-length-range":
                length_range = (int(cond[1]), int(cond[2]))
                continue
            elif isinstance(cond, list) and len(cond) == 3 and str(cond[0]).lower() in ("eq", "starts-with"):
                checks = [(str(cond[0]).lower(), cond[1], cond[2])]
            else:
                raise S3Error("InvalidPolicyDocument", f"Invalid Policy: unknown condition {cond!r}", 400, bucket)
            for how, name, want in checks:
                name = str(name).lower().lstrip("$")
                have = values.get(name)
                if have is None or not (have == want if how == "eq" else have.startswith(str(want))):
                    raise denied(f"Policy Condition failed: [{how!r}, ${name}, {want!r}]")
                covered.add(name)
        extra = sorted(k for k in fields if k not in covered and k not in ("policy", "x-amz-signature", "file")
                       and not k.startswith("x-ignore-"))
        if extra:
            raise denied(f"Extra input fields: {', '.join(extra)}")
        return account, length_range
