"""Identity verification: the ``userHash`` PX checks against the tenant's secret."""

from __future__ import annotations

import base64
import hashlib
import hmac

from px_middleware.config import HashEncoding


def user_hash(value: str, secret: str, encoding: HashEncoding = "hex") -> str:
    """HMAC-SHA256 of ``value`` keyed with ``secret``.

    PX's docs do not pin the encoding; lowercase hex is the industry convention
    (intercom-rails' ``hexdigest``), base64 is there for tenants that want it.
    """
    if not secret:
        raise ValueError("user_hash needs a non-empty secret")
    digest = hmac.new(secret.encode("utf-8"), value.encode("utf-8"), hashlib.sha256)
    if encoding == "hex":
        return digest.hexdigest()
    if encoding == "base64":
        return base64.b64encode(digest.digest()).decode("ascii")
    raise ValueError(f"unknown userHash encoding {encoding!r}; use 'hex' or 'base64'")
