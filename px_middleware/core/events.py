"""The bodies sent to the PX REST API: custom events and user/account upserts.

PX has no writable page-view or session endpoint, so server-side page views and
sessions are custom events (``POST /events/custom``). Bodies are plain dicts built
here once; the delivery layer serialises them off the request path.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from px_middleware.config import PXConfig
from px_middleware.core.model import Account, Coerced, Identity, PXValue, User
from px_middleware.core.pxmodel import FIELDS, KEYS, LOCATION_FIELDS, EntityName, rest_value
from px_middleware.core.session import SessionState

REDACTED = "[redacted]"


class _EventIds:
    """Unique event ids: a random per-process prefix and a counter.

    As unique as ``uuid4()`` per event and much cheaper. A forked child (gunicorn
    ``--preload``) gets a new prefix, or parent and children would repeat ids.
    """

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = uuid.uuid4().hex[:20] + "-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return self.prefix + str(next(self._counter))


event_ids = _EventIds()


def custom_event(
    config: PXConfig,
    name: str,
    *,
    date_ms: int,
    state: SessionState,
    account_id: str | None,
    attributes: Mapping[str, Any],
    url: str | None = None,
    referrer: str | None = None,
    remote_host: str | None = None,
) -> dict[str, Any]:
    """A PX custom event for the visitor of ``state``; ``eventId`` is fixed here, once."""
    user = state.user_id
    event: dict[str, Any] = {
        "eventId": event_ids.next(),
        "eventName": name,
        "date": date_ms,
        "identifyId": user if user is not None else state.visitor_id,
        "userType": "USER" if user is not None else "VISITOR",
        "propertyKey": config.product_key,
        "sessionId": state.session_id,
        "attributes": dict(attributes),
    }
    if account_id is not None:
        event["accountId"] = account_id
    if url is not None:
        event["url"] = url
    if referrer:
        event["referrer"] = referrer
    if remote_host:
        event["remoteHost"] = remote_host
    return event


def filter_query(query: str, redact: tuple[str, ...]) -> str:
    """Replace the values of sensitive query keys (case-insensitive) before they leave."""
    if not query or not redact:
        return query
    keys = {key.lower() for key in redact}
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [(key, REDACTED if key.lower() in keys else value) for key, value in pairs]
    )


def page_url(scheme: str, host: str, path: str, query: str, redact: tuple[str, ...]) -> str:
    filtered = filter_query(query, redact)
    return f"{scheme}://{host}{path}" + (f"?{filtered}" if filtered else "")


def filter_referrer(referrer: str | None, redact: tuple[str, ...]) -> str | None:
    if not referrer:
        return None
    base, sep, query = referrer.partition("?")
    return base + (sep + filter_query(query, redact) if sep else "")


def client_ip(peer: str | None, forwarded_for: str | None, trusted: tuple[str, ...]) -> str | None:
    """The client address, believing ``X-Forwarded-For`` only from trusted proxies.

    Walk the chain from the right (the hop nearest to us) and stop at the first
    address that is not a trusted proxy: everything left of it could be forged.
    """
    if peer is None:
        return None
    if not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _trusted(address: str, trusted: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for network in trusted:
        try:
            if ip in ipaddress.ip_network(network, strict=False):
                return True
        except ValueError:
            continue
    return False


def _rest_body(
    entity: EntityName,
    subject: User | Account,
    attributes: dict[str, PXValue],
    product_key: str,
    on_error: Callable[[str, Exception], None] | None,
) -> dict[str, Any]:
    """A REST user/account as PX's model has it: location nested, the rest custom.

    Values PX would refuse or ignore (read-only fields, an enum it does not know, 3.5
    where it wants an integer) go to ``on_error`` and are left out; the rest is sent.
    """
    attributes = dict(attributes)
    table = FIELDS[entity]
    defaults = subject.default_names()
    body: dict[str, Any] = {KEYS[entity]: attributes.pop("id"), "propertyKeys": [product_key]}
    location: dict[str, Any] = {}
    custom: dict[str, PXValue] = {}
    for name, value in attributes.items():
        if name not in defaults and name not in table:
            custom[name] = value
            continue
        nested = name in LOCATION_FIELDS
        try:
            value = rest_value(LOCATION_FIELDS[name] if nested else table[name], value)
        except ValueError as exc:
            if on_error is None:
                raise
            on_error(name, exc)
            continue
        (location if nested else body)[name] = value
    if location:
        body["location"] = location
    if custom:
        body["customAttributes"] = custom
    return body


def upsert_bodies(
    config: PXConfig,
    identity: Identity,
    on_error: Callable[[str, Exception], None] | None = None,
    *,
    coerced: Coerced | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """PX REST user and account objects (``identifyId``, ``location``, ``customAttributes``).

    ``coerced``: the user's and account's ``attributes()`` when the caller has them
    already (the middleware coerces once per request), so only the REST model's own
    refusals reach ``on_error`` here.

    An account without ``name`` is still sent: PX's PUT updates an existing account
    without it, and the POST that would create a missing one is refused by PX (the
    delivery logs and counts that drop).
    """
    account = identity.account
    user_attributes, account_attributes = (
        identity.attributes(on_error) if coerced is None else coerced
    )
    if account is not None and identity.user.account_id is None:
        user_attributes = {**user_attributes, "accountId": account.id}
    user = _rest_body("user", identity.user, user_attributes, config.product_key, on_error)
    account_body = None
    if account is not None and account_attributes is not None:
        account_body = _rest_body(
            "account", account, account_attributes, config.product_key, on_error
        )
    return user, account_body

