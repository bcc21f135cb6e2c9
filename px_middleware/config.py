"""``PXConfig``: every setting in one frozen, validated value.

Validation happens here, at construction, so a typo fails at start-up with a clear
message instead of silently producing pages without PX. Secrets are kept out of
``repr`` so they never reach a log line or a traceback.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

log = logging.getLogger("px_middleware")

DataCenter = Literal["US", "EU", "US2", "local"]
HashField = Literal["id", "email"]
HashEncoding = Literal["hex", "base64"]

SDK_HOSTS: dict[str, str] = {
    "US": "https://web-sdk.aptrinsic.com/api/aptrinsic.js",
    "EU": "https://web-sdk-eu.aptrinsic.com/api/aptrinsic.js",
    "US2": "https://web-sdk-us2.aptrinsic.com/api/aptrinsic.js",
}
API_HOSTS: dict[str, str] = {
    "US": "https://api.aptrinsic.com/v1",
    "EU": "https://api-eu.aptrinsic.com/v1",
    "US2": "https://api-us2.aptrinsic.com/v1",
}
#: Seconds a process may spend delivering what is left when it exits or shuts down.
SHUTDOWN_TIMEOUT = 5.0
#: No single retry wait is longer than this, whatever the server asked for.
MAX_RETRY_WAIT = 30.0
#: Where ``python -m px_middleware devserver`` listens by default.
LOCAL_BASE_URL = "http://127.0.0.1:8787"

# AP-XXXXXXXXXXXX-2, optionally with a numeric suffix such as -2-1.
_PRODUCT_KEY = re.compile(r"AP-[A-Z0-9]{6,}-\d+(?:-\d+)?")
_URL = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?")
#: RFC 6265 cookie-name: an HTTP token.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REDIS_URL = re.compile(r"(?:rediss?://[^\s/?#]*|unix://)(?:[/?#]\S*)?")
_SDK_CONFIG_KEYS = frozenset(
    {
        "htmlSanitization",
        "usePOST",
        "fullDomainCookie",
        "localStorageCookie",
        "filterUrls",
        "filterType",
        "excludeUrls",
    }
)
_DEFAULT_BOTS = (
    r"bot|crawl|spider|slurp|facebookexternalhit|headless|lighthouse|pingdom|"
    r"uptimerobot|curl/|wget/|python-requests|httpx|go-http-client"
)


def _secret_field(default: str | None = None) -> Any:
    return dataclasses.field(default=default, repr=False)


@dataclasses.dataclass(frozen=True)
class PXConfig:
    """Configuration for both middlewares.

    Only ``product_key`` is required. Server-side events and upserts turn on when
    ``api_key`` is set; the ``userHash`` is added when ``hmac_secret`` is set.
    """

    product_key: str
    #: Identity-verification secret from PX; used server side only, never rendered.
    hmac_secret: str | None = _secret_field()
    #: REST API key (``X-APTRINSIC-API-KEY``); enables server-side events and upserts.
    api_key: str | None = _secret_field()
    data_center: DataCenter = "US"
    #: Overrides for the SDK script and REST base URL (proxies, the local stand-in).
    sdk_url: str | None = None
    api_url: str | None = None
    #: Base URL of the local stand-in when ``data_center="local"``.
    local_url: str = LOCAL_BASE_URL
    #: The loader's 5th argument, e.g. ``{"usePOST": True}``.
    sdk_config: Mapping[str, Any] | None = None
    #: Which user field the ``userHash`` covers, and how the digest is written.
    hash_field: HashField = "id"
    hash_encoding: HashEncoding = "hex"

    # -- injection ---------------------------------------------------------------
    inject: bool = True
    #: Inject into anonymous pages too (loader only, no identify).
    inject_anonymous: bool = True
    #: Glob patterns (``fnmatch``) on the request path; excludes win over includes.
    include_paths: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()
    inject_statuses: frozenset[int] = frozenset({200})

    # -- server-side sessions and events -------------------------------------------
    #: Signs the session cookie; defaults to ``hmac_secret`` or ``api_key``.
    cookie_secret: str | None = _secret_field()
    cookie_name: str = "px_session"
    session_timeout: float = 30 * 60
    page_view_event: str = "page_view"
    session_start_event: str = "session_start"
    session_end_event: str = "session_end"
    track_events: bool = True
    track_anonymous: bool = True
    #: Record non-HTML responses (API calls) as page views too.
    track_all_responses: bool = False
    #: Statuses that count as a page view: never a redirect or an error page.
    page_view_statuses: frozenset[int] = frozenset(range(200, 300))
    honor_privacy_signals: bool = False
    send_remote_host: bool = False
    #: Proxy addresses whose ``X-Forwarded-For`` is believed (with ``send_remote_host``).
    trusted_proxies: tuple[str, ...] = ()
    #: Query keys whose values are replaced before a URL leaves the process.
    redact_query_keys: tuple[str, ...] = (
        "token",
        "password",
        "secret",
        "code",
        "key",
        "api_key",
        "session",
        "auth",
    )
    bot_pattern: str = _DEFAULT_BOTS

    # -- delivery -------------------------------------------------------------------
    #: SQLite file for the durable outbox; ``None`` keeps events in memory only.
    outbox_path: str | None = None
    max_queue_events: int = 10_000
    max_queue_bytes: int = 16 * 1024 * 1024
    rate_limit: float = 150.0
    daily_budget: int | None = None
    concurrency: int = 4
    request_timeout: float = 10.0
    #: Send several events in one list body. PX documents one event per request, so
    #: off by default; when on and PX refuses the list shape, delivery falls back to
    #: single events for the rest of the process. Without it, PX's 1M requests/day
    #: budget is 1M events/day.
    batch_events: bool = False
    #: Failed attempts after which an item goes to the dead letter (with an outbox:
    #: its ``px_dead`` table), once it has also been failing ``dead_letter_after`` s.
    max_attempts: int = 10
    dead_letter_after: float = 3600.0
    #: ``redis://`` / ``rediss://`` / ``unix://`` URL: one PX budget and one outbox shared
    #: by every process on every host (``pip install 'px_middleware[redis]'``).
    redis_url: str | None = _secret_field()

    def __post_init__(self) -> None:
        if not isinstance(self.product_key, str) or not _PRODUCT_KEY.fullmatch(
            self.product_key
        ):
            raise ValueError(
                f"product_key {self.product_key!r} is not a PX product key; "
                "expected the shape AP-XXXXXXXXXXXX-2 (Administration > Products)"
            )
        if self.data_center not in ("US", "EU", "US2", "local"):
            raise ValueError(
                f"unknown data_center {self.data_center!r}; use 'US', 'EU', 'US2' or 'local'"
            )
        for name in ("hmac_secret", "api_key", "cookie_secret"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None")
        for name in ("sdk_url", "api_url", "local_url"):
            value = getattr(self, name)
            # Whole-string match: a stray space or newline must not reach the page.
            if value is not None and not (isinstance(value, str) and _valid_url(value)):
                raise ValueError(f"{name} {value!r} must be an absolute http(s) URL")
        if self.hash_field not in ("id", "email"):
            raise ValueError(f"hash_field must be 'id' or 'email', not {self.hash_field!r}")
        if self.hash_encoding not in ("hex", "base64"):
            raise ValueError(
                f"hash_encoding must be 'hex' or 'base64', not {self.hash_encoding!r}"
            )
        if self.sdk_config is not None:
            unknown = set(self.sdk_config) - _SDK_CONFIG_KEYS
            if unknown:
                raise ValueError(
                    f"unknown sdk_config keys {sorted(unknown)}; "
                    f"known keys are {sorted(_SDK_CONFIG_KEYS)}"
                )
        for name in ("include_paths", "exclude_paths", "trusted_proxies", "redact_query_keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a tuple of strings, not a single string")
            value = tuple(value)
            for item in value:
                if not isinstance(item, str) or not item.strip() or item != item.strip():
                    raise ValueError(f"{name}: {item!r} must be a non-empty string "
                                     "without surrounding spaces")
            object.__setattr__(self, name, value)
        for name in ("include_paths", "exclude_paths"):
            for pattern in getattr(self, name):
                # Request paths start with "/": any other glob could never match one.
                if not pattern.startswith(("/", "*", "?", "[")):
                    raise ValueError(
                        f"{name}: {pattern!r} can never match a request path, which starts "
                        f"with '/' (did you mean {'/' + pattern!r}?)"
                    )
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an IP address or CIDR network "
                    f"({exc})"
                ) from None
        for name in ("cookie_name", "page_view_event", "session_start_event",
                     "session_end_event"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string")
        if not _COOKIE_NAME.fullmatch(self.cookie_name):
            raise ValueError(
                f"cookie_name {self.cookie_name!r} is not a valid cookie name "
                "(letters, digits and !#$%&'*+-.^_`|~ only)"
            )
        for name in ("inject_statuses", "page_view_statuses"):
            object.__setattr__(self, name, _statuses(name, getattr(self, name)))
        if self.session_timeout <= 0:
            raise ValueError("session_timeout must be positive (seconds)")
        if self.rate_limit <= 0:
            raise ValueError("rate_limit must be positive (requests per second)")
        if self.max_queue_events < 1 or self.max_queue_bytes < 1024:
            raise ValueError("max_queue_events must be >= 1 and max_queue_bytes >= 1024")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.redis_url is not None and not (
            isinstance(self.redis_url, str) and _REDIS_URL.fullmatch(self.redis_url)
        ):
            raise ValueError("redis_url must look like redis://host:6379/0 (or rediss://, unix://)")
        try:
            re.compile(self.bot_pattern)
        except re.error as exc:
            raise ValueError(f"bot_pattern is not a valid regular expression: {exc}") from None
        if self.max_attempts < 1 or self.dead_letter_after < 0:
            raise ValueError("max_attempts must be >= 1 and dead_letter_after >= 0 (seconds)")

    # -- derived values ---------------------------------------------------------------
    @property
    def sdk_script_url(self) -> str:
        if self.sdk_url:
            return self.sdk_url
        if self.data_center == "local":
            return self.local_url.rstrip("/") + "/api/aptrinsic.js"
        return SDK_HOSTS[self.data_center]

    @property
    def rest_url(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        if self.data_center == "local":
            return self.local_url.rstrip("/") + "/v1"
        return API_HOSTS[self.data_center]

    @property
    def events_enabled(self) -> bool:
        return self.track_events and self.api_key is not None

    @property
    def session_signing_secret(self) -> str | None:
        return self.cookie_secret or self.hmac_secret or self.api_key

    def path_allowed(self) -> Callable[[str], bool]:
        """A predicate on request paths built from include/exclude globs."""
        return _path_matcher(self.include_paths, self.exclude_paths)

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> PXConfig:
        """Build from ``PX_*`` variables (``PX_PRODUCT_KEY``, ``PX_HMAC_SECRET``, ...).

        The environment is ambient: other tools put ``PX_*`` variables there too
        (Kubernetes, for a service named ``px``), so an unknown name is ignored with a
        DEBUG line, and one a typo away from a setting gets a WARNING naming it.
        """
        env = os.environ if environ is None else environ
        return cls.from_mapping({}, environ=env, **overrides)

    @classmethod
    def from_mapping(
        cls,
        values: Mapping[str, Any],
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> PXConfig:
        """Build from ``PX_*`` keys (Flask ``app.config``, Django settings), converting types.

        ``values`` is explicit configuration: an unknown ``PX_*`` key there is an error
        (someone wrote it for us, and a misspelt secret must not be ignored). Settings it
        lacks are then taken from ``environ`` (ambient, see ``from_env``) when given.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in _ambient_settings(environ or {}, fields).items():
            kwargs[key] = _convert(key, fields[key].type, raw)
        for key, raw in values.items():
            if not key.startswith("PX_"):
                continue
            name = key[3:].lower()
            if name not in fields:
                meant = _meant(name, fields)
                hint = f" (did you mean PX_{meant.upper()}?)" if meant else ""
                known = ", ".join("PX_" + n.upper() for n in fields)
                raise ValueError(f"unknown setting {key}{hint}; known settings: {known}")
            kwargs[name] = _convert(name, fields[name].type, raw)
        kwargs.update(overrides)
        if "product_key" not in kwargs:
            raise ValueError("PX_PRODUCT_KEY is required (Administration > Products in PX)")
        return cls(**kwargs)


# Variables Kubernetes sets for a Service named ``px`` (or ``px-*``): PX_PORT,
# PX_PORT_80_TCP{,_ADDR,_PORT,_PROTO}, PX_SERVICE_HOST, PX_SERVICE_PORT{,_<NAME>}.
_KUBERNETES = re.compile(
    r"PX(?:_\w+?)?_(?:SERVICE_HOST|SERVICE_PORT(?:_\w+)?"
    r"|PORT(?:_\d+_(?:TCP|UDP|SCTP)(?:_(?:ADDR|PORT|PROTO))?)?)"
)


def _ambient_settings(environ: Mapping[str, str], fields: Mapping[str, Any]) -> dict[str, str]:
    """The ``PX_*`` variables of ``environ`` that are settings, by field name."""
    found: dict[str, str] = {}
    for key, raw in environ.items():
        if not key.startswith("PX_"):
            continue
        name = key[3:].lower()
        if name in fields:
            found[name] = raw
        elif _KUBERNETES.fullmatch(key):
            log.debug("px_middleware: ignoring %s (a Kubernetes service variable)", key)
        elif meant := _meant(name, fields):
            log.warning(
                "px_middleware: ignoring environment variable %s: not a setting; "
                "did you mean PX_%s?", key, meant.upper()
            )
        else:
            log.debug("px_middleware: ignoring environment variable %s: not a setting", key)
    return found


def _meant(name: str, fields: Iterable[str]) -> str | None:
    """The setting ``name`` is a typo of: within 2 edits (1 for short names), if any."""
    limit = 1 if len(name) <= 6 else 2
    best = min(fields, key=lambda field: _edit_distance(name, field))
    return best if _edit_distance(name, best) <= limit else None


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance where swapping two neighbours counts as one edit (OSA)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


def _convert(name: str, annotation: Any, raw: Any) -> Any:
    """Turn an environment string into the field's type; pass real values through."""
    if not isinstance(raw, str):
        return raw
    text = str(annotation)
    if raw == "" and "None" in text:
        return None
    if text.startswith("bool"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"PX_{name.upper()}={raw!r} is not a boolean (use true/false)")
    try:
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
    except ValueError:
        raise ValueError(f"PX_{name.upper()}={raw!r} is not a number") from None
    if text.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if text.startswith("frozenset"):
        try:
            return frozenset(int(part) for part in raw.split(",") if part.strip())
        except ValueError:
            message = f"PX_{name.upper()}={raw!r} must be comma-separated integers"
            raise ValueError(message) from None
    if text.startswith("Mapping"):
        import json

        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"PX_{name.upper()} must be a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError(f"PX_{name.upper()} must be a JSON object")
        return value
    return raw


def _valid_url(value: str) -> bool:
    """Whole-string http(s) URL with a host and, when given, a port that parses."""
    if not _URL.fullmatch(value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for "host:99999" or "host:x")
    except ValueError:
        return False
    return bool(parts.hostname)


def _statuses(name: str, value: Any) -> frozenset[int]:
    if isinstance(value, (str, bytes, int)):
        raise ValueError(f"{name} must be a set of HTTP status codes, not {value!r}")
    statuses = frozenset(value)
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"{name}: {status!r} is not an HTTP status code (100-599)")
    return statuses


def _path_matcher(include: tuple[str, ...], exclude: tuple[str, ...]) -> Callable[[str], bool]:
    inc = re.compile("|".join(fnmatch.translate(p) for p in include)) if include else None
    exc = re.compile("|".join(fnmatch.translate(p) for p in exclude)) if exclude else None

    def allowed(path: str) -> bool:
        if exc is not None and exc.match(path):
            return False
        return inc is None or inc.match(path) is not None

    return allowed
