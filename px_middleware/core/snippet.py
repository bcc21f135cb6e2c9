"""Render the PX loader tag and the ``aptrinsic(...)`` calls that follow it.

The output goes inside a ``<script>`` element of somebody else's page, so every value
is JSON with the characters that could end the script or open a comment (``<``,
``>``, ``&``, ``'``) and the JavaScript line terminators U+2028/U+2029 escaped. The
result is pure ASCII, which lets the injector splice bytes without decoding the page.
"""

from __future__ import annotations

import functools
import html
import json
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from px_middleware.config import PXConfig
from px_middleware.core.model import Coerced, Identity, PXValue
from px_middleware.core.signing import user_hash

#: Attribute on our ``<script>`` tag; also how tests and humans spot our snippet.
MARKER = 'data-px-middleware="1"'
#: Any PX loader (ours or hand-pasted) mentions this; the injector skips such pages.
LOADER_SIGNATURE = b"aptrinsic"
#: How our snippet ends; ``with_set_user`` adds its call just before it.
_CLOSE = b"</script>"

_NONCE = re.compile(r"[A-Za-z0-9+/_=-]{1,256}")
#: Rendered where the nonce goes, so a snippet is cached once for every nonce; random
#: per process (128 bits), so no attribute of a page can hold it. A valid nonce needs
#: no escaping in JSON or in an HTML attribute, so swapping it in is rendering it.
NONCE_SLOT = secrets.token_hex(16)
_SLOT = NONCE_SLOT.encode("ascii")

# Split where the loader may set the nonce on the SDK <script> it creates: under a
# nonce-only CSP that element needs the page's nonce as much as the inline script does.
_LOADER_HEAD = (
    '(function(n,t,a,e,co){var i="aptrinsic";n[i]=n[i]||function(){'
    "(n[i].q=n[i].q||[]).push(arguments)},n[i].p=e;n[i].c=co;"
    'var r=t.createElement("script");r.async=!0,r.src=a+"?a="+e;'
)
_LOADER_TAIL = (
    'var c=t.getElementsByTagName("script")[0];'
    # No "&&" or "<": the same bytes must also be well-formed inside XHTML.
    "if(c){{c.parentNode.insertBefore(r,c)}}else{{t.head.appendChild(r)}}"
    "}})(window,document,{url},{key}{config});"
)


# One encoder for every call: json.dumps() with options builds a new one each time.
# ensure_ascii escapes U+2028/U+2029 and all other non-ASCII as \\uXXXX.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def js_value(value: Any) -> str:
    """JSON that is safe inside an HTML ``<script>`` element and pure ASCII."""
    # Chained replace: each is one C-level scan that returns the same string when the
    # character is absent (the usual case); str.translate with a dict is 10x slower.
    return (
        _ENCODER.encode(value)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("'", "\\u0027")
    )


def valid_nonce(nonce: str) -> str:
    """Return ``nonce`` if it is a plausible CSP nonce (base64 alphabet), else raise."""
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise ValueError("CSP nonce must be 1-256 base64 characters")
    return nonce


def with_nonce(snippet: bytes, nonce: str) -> bytes:
    """A snippet rendered with ``nonce=NONCE_SLOT``, for ``nonce``."""
    return snippet.replace(_SLOT, valid_nonce(nonce).encode("ascii"))


def identify_call(
    config: PXConfig,
    identity: Identity,
    on_attribute_error: Callable[[str, Exception], None] | None = None,
    coerced: Coerced | None = None,
) -> str:
    """``aptrinsic("identify", user, account)`` with ``userHash`` when a secret is set.

    ``coerced``: the user's and account's ``attributes()`` when the caller has them
    already (they are not changed here). Raises ``ValueError`` when the hash cannot be
    computed (``hash_field="email"`` and no email): PX would reject the identify, so the
    caller must not send it.
    """
    if coerced is None:
        coerced = identity.attributes(on_attribute_error)
    user: dict[str, PXValue] = dict(coerced[0])  # a copy: userHash goes in
    if config.hmac_secret:
        hashed = user.get(config.hash_field)
        if not isinstance(hashed, str) or not hashed:
            raise ValueError(f"cannot compute userHash: user has no {config.hash_field!r}")
        user["userHash"] = user_hash(hashed, config.hmac_secret, config.hash_encoding)
    args = [js_value("identify"), js_value(user)]
    if coerced[1] is not None:
        args.append(js_value(coerced[1]))
    return f"aptrinsic({','.join(args)});"


@functools.lru_cache(maxsize=16)
def _loader_tail(url: str, key: str, sdk_config: str) -> str:
    """The loader is the same on every page of an app: build it once per config."""
    return _LOADER_TAIL.format(url=js_value(url), key=js_value(key), config=sdk_config)


def render(
    config: PXConfig,
    identity: Identity | None = None,
    *,
    nonce: str | None = None,
    set_user: Mapping[str, PXValue] | None = None,
    reset: bool = False,
    on_attribute_error: Callable[[str, Exception], None] | None = None,
    coerced: Coerced | None = None,
) -> bytes:
    """The whole ``<script>`` element: loader, then ``reset``, ``identify``, ``set``.

    ``coerced``: the identity's attributes, as for ``identify_call``.
    """
    sdk_config = "" if config.sdk_config is None else "," + js_value(dict(config.sdk_config))
    tail = _loader_tail(config.sdk_script_url, config.product_key, sdk_config)
    if nonce is None:
        parts = [_LOADER_HEAD, tail]
    else:
        parts = [_LOADER_HEAD, f"r.nonce={js_value(valid_nonce(nonce))};", tail]
    if reset:
        parts.append('aptrinsic("reset");')
    if identity is not None:
        parts.append(identify_call(config, identity, on_attribute_error, coerced))
    nonce_attr = "" if nonce is None else f' nonce="{html.escape(nonce)}"'
    script = f"<script {MARKER}{nonce_attr}>{''.join(parts)}".encode("ascii") + _CLOSE
    return with_set_user(script, set_user) if identity is not None and set_user else script


def with_set_user(snippet: bytes, values: Mapping[str, PXValue]) -> bytes:
    """``snippet`` with ``aptrinsic("set","user",values)`` last: page-specific values
    (a visit time) stay out of the cached part."""
    call = f'aptrinsic("set","user",{js_value(dict(values))});'.encode("ascii")
    return b"".join((snippet[: -len(_CLOSE)], call, _CLOSE))
