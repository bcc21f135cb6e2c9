"""``PXConfig``: validation messages, secrets out of ``repr``, env/mapping conversion, URLs."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from typing import Any

import pytest

from px_middleware import PXConfig

KEY = "AP-TESTKEY12345-2"


@pytest.mark.parametrize("key", ["AP-TESTKEY12345-2", "AP-ABC123-2-1", "AP-XXXXXXXXXXXX-2-3"])
def test_product_keys_of_the_documented_shape_are_accepted(key: str) -> None:
    assert PXConfig(key).product_key == key


@pytest.mark.parametrize(
    "key", ["", "TESTKEY12345-2", "AP-testkey1234-2", "AP-TESTKEY12345", "AP-ABC-2",
            " AP-TESTKEY12345-2", "AP-TESTKEY12345-2\n", "AP-TESTKEY12345-2-x"]
)
def test_bad_product_key_names_the_expected_shape(key: str) -> None:
    with pytest.raises(ValueError, match=r"is not a PX product key; expected the shape AP-"):
        PXConfig(key)


def test_unknown_data_center() -> None:
    with pytest.raises(ValueError, match=r"unknown data_center 'APAC'; use 'US', 'EU', 'US2'"):
        PXConfig(KEY, data_center="APAC")  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["hmac_secret", "api_key", "cookie_secret"])
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_secrets_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be a non-empty string or None"):
        PXConfig(KEY, **dict[str, Any]({field: value}))


@pytest.mark.parametrize("field", ["sdk_url", "api_url", "local_url"])
@pytest.mark.parametrize(
    "url", ["ftp://x", "example.com", "https://", "//cdn.example.com/x.js", "https://x y",
            "https://x\n", "javascript:alert(1)"]
)
def test_bad_urls_are_refused(field: str, url: str) -> None:
    with pytest.raises(ValueError, match=f"{field} .* must be an absolute http\\(s\\) URL"):
        PXConfig(KEY, **dict[str, Any]({field: url}))


def test_unknown_sdk_config_key_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown sdk_config keys \['usePost'\]; known keys"):
        PXConfig(KEY, sdk_config={"usePost": True})
    assert PXConfig(KEY, sdk_config={"usePOST": True}).sdk_config == {"usePOST": True}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hash_field": "name"}, "hash_field must be 'id' or 'email'"),
        ({"hash_encoding": "base32"}, "hash_encoding must be 'hex' or 'base64'"),
        ({"exclude_paths": "/admin/*"}, "exclude_paths must be a tuple of strings"),
        ({"session_timeout": 0}, "session_timeout must be positive"),
        ({"rate_limit": -1.0}, "rate_limit must be positive"),
        ({"max_queue_bytes": 10}, "max_queue_bytes >= 1024"),
        ({"concurrency": 0}, "concurrency must be >= 1"),
        ({"bot_pattern": "("}, "bot_pattern is not a valid regular expression"),
    ],
)
def test_other_validation_messages(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PXConfig(KEY, **kwargs)


def test_repr_and_str_never_show_secrets() -> None:
    config = PXConfig(
        KEY, hmac_secret="hmac-SECRET-1", api_key="api-SECRET-2", cookie_secret="cookie-SECRET-3"
    )
    for text in (repr(config), str(config), f"{config}", f"{config!r}"):
        assert "SECRET" not in text
        assert KEY in text  # the rest is still there for debugging


def test_secrets_stay_usable() -> None:
    config = PXConfig(KEY, hmac_secret="h", api_key="a")
    assert (config.hmac_secret, config.api_key) == ("h", "a")
    assert config.session_signing_secret == "h"
    assert PXConfig(KEY, api_key="a").session_signing_secret == "a"
    assert PXConfig(KEY, hmac_secret="h", cookie_secret="c").session_signing_secret == "c"
    assert PXConfig(KEY).session_signing_secret is None


# -- data centers -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("dc", "sdk", "rest"),
    [
        ("US", "https://web-sdk.aptrinsic.com/api/aptrinsic.js", "https://api.aptrinsic.com/v1"),
        ("EU", "https://web-sdk-eu.aptrinsic.com/api/aptrinsic.js",
         "https://api-eu.aptrinsic.com/v1"),
        ("US2", "https://web-sdk-us2.aptrinsic.com/api/aptrinsic.js",
         "https://api-us2.aptrinsic.com/v1"),
        ("local", "http://127.0.0.1:8787/api/aptrinsic.js", "http://127.0.0.1:8787/v1"),
    ],
)
def test_data_center_picks_the_sdk_and_rest_urls(dc: Any, sdk: str, rest: str) -> None:
    config = PXConfig(KEY, data_center=dc)
    assert (config.sdk_script_url, config.rest_url) == (sdk, rest)


def test_local_data_center_follows_local_url() -> None:
    config = PXConfig(KEY, data_center="local", local_url="http://localhost:9000/")
    assert config.sdk_script_url == "http://localhost:9000/api/aptrinsic.js"
    assert config.rest_url == "http://localhost:9000/v1"


def test_explicit_urls_win_over_the_data_center() -> None:
    config = PXConfig(KEY, data_center="EU", sdk_url="https://proxy.example.com/px.js",
                      api_url="https://proxy.example.com/px/v1/")
    assert config.sdk_script_url == "https://proxy.example.com/px.js"
    assert config.rest_url == "https://proxy.example.com/px/v1"


def test_events_need_an_api_key() -> None:
    assert not PXConfig(KEY).events_enabled
    assert PXConfig(KEY, api_key="a").events_enabled
    assert not PXConfig(KEY, api_key="a", track_events=False).events_enabled


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trusted_proxies": ("10.0.0.0/33",)},
         r"trusted_proxies: '10.0.0.0/33' is not an IP address or CIDR network"),
        ({"trusted_proxies": ("10.0.0.300",)}, r"'10.0.0.300' is not an IP address or CIDR"),
        ({"trusted_proxies": ("proxy.internal",)}, r"'proxy.internal' is not an IP address"),
        ({"trusted_proxies": ("fe80::/129",)}, r"'fe80::/129' is not an IP address"),
        ({"trusted_proxies": (" 10.0.0.1",)}, r"without surrounding spaces"),
        ({"api_url": "https://api.example.com:99999/v1"}, r"api_url .* absolute http\(s\) URL"),
        ({"sdk_url": "https://cdn.example.com:x/sdk.js"}, r"sdk_url .* absolute http\(s\) URL"),
        ({"include_paths": ("app/*",)},
         r"include_paths: 'app/\*' can never match a request path.*did you mean '/app/\*'"),
        ({"exclude_paths": ("",)}, r"exclude_paths: '' must be a non-empty string"),
        ({"redact_query_keys": ("token", "")}, r"redact_query_keys: '' must be a non-empty"),
        ({"redact_query_keys": (None,)}, r"redact_query_keys: None must be a non-empty"),
        ({"cookie_name": "px session"}, r"cookie_name 'px session' is not a valid cookie name"),
        ({"cookie_name": "px;x"}, r"is not a valid cookie name"),
        ({"page_view_event": " "}, r"page_view_event must be a non-empty string"),
        ({"page_view_statuses": frozenset({200, 1000})},
         r"page_view_statuses: 1000 is not an HTTP status code"),
        ({"inject_statuses": 200}, r"inject_statuses must be a set of HTTP status codes"),
        ({"inject_statuses": frozenset({True})}, r"inject_statuses: True is not an HTTP status"),
    ],
)
def test_every_cidr_url_pattern_and_name_is_checked_at_start_up(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PXConfig(KEY, **kwargs)


def test_valid_networks_patterns_and_statuses_are_kept() -> None:
    config = PXConfig(
        KEY,
        trusted_proxies=("10.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32", "10.1.2.3/8"),
        include_paths=("/app/*", "*.html", "[ab]*"),
        page_view_statuses=frozenset({200, 203}),
        api_url="http://127.0.0.1:8787/v1",
    )
    assert config.trusted_proxies[-1] == "10.1.2.3/8"  # host bits allowed, as before
    assert config.page_view_statuses == frozenset({200, 203})
    assert PXConfig(KEY).page_view_statuses == frozenset(range(200, 300))


def test_page_view_statuses_from_the_environment() -> None:
    config = PXConfig.from_env({"PX_PRODUCT_KEY": KEY, "PX_PAGE_VIEW_STATUSES": "200, 203"})
    assert config.page_view_statuses == frozenset({200, 203})


# -- paths --------------------------------------------------------------------------------------

def test_path_globs_excludes_win_over_includes() -> None:
    allowed = PXConfig(
        KEY, include_paths=("/app/*", "/"), exclude_paths=["/app/admin/*"]  # type: ignore[arg-type]
    ).path_allowed()
    assert allowed("/") and allowed("/app/home") and allowed("/app/a/b")
    assert not allowed("/app/admin/users")
    assert not allowed("/other")
    everything = PXConfig(KEY).path_allowed()
    assert everything("/anything") and everything("")


# -- from_env / from_mapping ----------------------------------------------------------------------

def test_from_env_converts_types() -> None:
    env = {
        "PX_PRODUCT_KEY": KEY,
        "PX_HMAC_SECRET": "s3cret",
        "PX_DATA_CENTER": "EU",
        "PX_INJECT_ANONYMOUS": "false",
        "PX_TRACK_EVENTS": "Yes",
        "PX_SESSION_TIMEOUT": "900.5",
        "PX_CONCURRENCY": "2",
        "PX_DAILY_BUDGET": "",
        "PX_EXCLUDE_PATHS": "/static/*, /health ,",
        "PX_INJECT_STATUSES": "200,203",
        "PX_SDK_CONFIG": '{"usePOST": true}',
        "PX_OUTBOX_PATH": "",
        "HOME": "/root",  # not ours: ignored
    }
    config = PXConfig.from_env(env)
    assert config.hmac_secret == "s3cret"
    assert config.data_center == "EU"
    assert config.inject_anonymous is False
    assert config.track_events is True
    assert config.session_timeout == 900.5
    assert config.concurrency == 2
    assert config.daily_budget is None
    assert config.exclude_paths == ("/static/*", "/health")
    assert config.inject_statuses == frozenset({200, 203})
    assert config.sdk_config == {"usePOST": True}
    assert config.outbox_path is None


def test_from_env_reads_os_environ_and_takes_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("PX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PX_PRODUCT_KEY", KEY)
    monkeypatch.setenv("PX_INJECT", "0")
    config = PXConfig.from_env(api_key="override")
    assert (config.product_key, config.inject, config.api_key) == (KEY, False, "override")


def test_from_mapping_passes_real_values_through() -> None:
    config = PXConfig.from_mapping(
        {"PX_PRODUCT_KEY": KEY, "PX_INJECT_STATUSES": {200, 404}, "PX_RATE_LIMIT": 10,
         "SECRET_KEY": "flask's own setting"}
    )
    assert config.inject_statuses == frozenset({200, 404})
    assert config.rate_limit == 10


def test_unknown_setting_is_an_error_that_lists_the_known_ones() -> None:
    """In explicit configuration (``app.config``, Django settings) a typo is an error."""
    with pytest.raises(ValueError, match=r"unknown setting PX_HMAC_SECRT \(did you mean "
                                         r"PX_HMAC_SECRET\?\); known settings: "
                                         r"PX_PRODUCT_KEY, PX_HMAC_SECRET"):
        PXConfig.from_mapping({"PX_PRODUCT_KEY": KEY, "PX_HMAC_SECRT": "x"})
    with pytest.raises(ValueError, match=r"unknown setting PX_COLOUR; known settings: "):
        PXConfig.from_mapping({"PX_PRODUCT_KEY": KEY, "PX_COLOUR": "blue"})


def test_missing_product_key() -> None:
    with pytest.raises(ValueError, match="PX_PRODUCT_KEY is required"):
        PXConfig.from_env({"PX_HMAC_SECRET": "x"})


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("PX_INJECT", "maybe", r"PX_INJECT='maybe' is not a boolean"),
        ("PX_CONCURRENCY", "two", r"PX_CONCURRENCY='two' is not a number"),
        ("PX_SESSION_TIMEOUT", "30m", r"PX_SESSION_TIMEOUT='30m' is not a number"),
        ("PX_INJECT_STATUSES", "200,ok", r"must be comma-separated integers"),
        ("PX_SDK_CONFIG", "{usePOST}", r"PX_SDK_CONFIG must be a JSON object"),
        ("PX_SDK_CONFIG", "[1]", r"PX_SDK_CONFIG must be a JSON object"),
    ],
)
def test_conversion_errors_name_the_variable(name: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PXConfig.from_env({"PX_PRODUCT_KEY": KEY, name: raw})


def test_empty_secret_in_the_environment_means_unset() -> None:
    """An empty ``PX_HMAC_SECRET=`` is "not configured" (as shells and .env files write an
    unset value), unlike ``PXConfig(hmac_secret="")`` in code, which is a mistake."""
    assert PXConfig.from_env({"PX_PRODUCT_KEY": KEY, "PX_HMAC_SECRET": ""}).hmac_secret is None


def test_every_field_is_reachable_from_the_environment() -> None:
    names = {f.name for f in dataclasses.fields(PXConfig)}
    assert "product_key" in names and "hmac_secret" in names
    config = PXConfig.from_env({"PX_PRODUCT_KEY": KEY, "PX_COOKIE_NAME": "px"})
    assert config.cookie_name == "px"


def test_config_is_frozen() -> None:
    config = PXConfig(KEY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.product_key = "AP-OTHERKEY1234-2"  # type: ignore[misc]


# -- the environment is ambient: unknown names are ignored, typos warned about -------------

def test_typo_in_the_environment_warns_naming_the_setting_meant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="px_middleware")
    config = PXConfig.from_env({"PX_PRODUCT_KEY": KEY, "PX_PRODUCT_KYE": "AP-OTHER000000-2",
                                "PX_HMAC_SECRT": "s", "PX_API_KEYS": "k"})
    assert config.product_key == KEY and config.hmac_secret is None and config.api_key is None
    warnings = {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    assert warnings == {
        "px_middleware: ignoring environment variable PX_PRODUCT_KYE: not a setting; "
        "did you mean PX_PRODUCT_KEY?",
        "px_middleware: ignoring environment variable PX_HMAC_SECRT: not a setting; "
        "did you mean PX_HMAC_SECRET?",
        "px_middleware: ignoring environment variable PX_API_KEYS: not a setting; "
        "did you mean PX_API_KEY?",
    }


def test_unknown_environment_variable_is_ignored_with_a_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="px_middleware")
    config = PXConfig.from_env({"PX_PRODUCT_KEY": KEY, "PX_RELEASE_CHANNEL": "beta"})
    assert config.product_key == KEY
    [record] = [r for r in caplog.records if "PX_RELEASE_CHANNEL" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    assert "not a setting" in record.getMessage()


KUBERNETES_SERVICE_VARIABLES = {
    # What the kubelet sets for a Service named "px" with ports 80 (http) and 9090 (metrics).
    "PX_PORT": "tcp://10.0.0.7:80",
    "PX_PORT_80_TCP": "tcp://10.0.0.7:80",
    "PX_PORT_80_TCP_ADDR": "10.0.0.7",
    "PX_PORT_80_TCP_PORT": "80",
    "PX_PORT_80_TCP_PROTO": "tcp",
    "PX_PORT_9090_UDP_PROTO": "udp",
    "PX_SERVICE_HOST": "10.0.0.7",
    "PX_SERVICE_PORT": "80",
    "PX_SERVICE_PORT_HTTP": "80",
    "PX_SERVICE_PORT_METRICS": "9090",
    # ... and for a Service named "px-api".
    "PX_API_SERVICE_HOST": "10.0.0.8",
    "PX_API_PORT_443_TCP_ADDR": "10.0.0.8",
}


def test_kubernetes_service_variables_are_never_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="px_middleware")
    config = PXConfig.from_env({"PX_PRODUCT_KEY": KEY, **KUBERNETES_SERVICE_VARIABLES})
    assert config == PXConfig(KEY)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    ignored = {r.getMessage().split()[2] for r in caplog.records}
    assert ignored == set(KUBERNETES_SERVICE_VARIABLES)


def test_kubernetes_variables_do_not_crash_a_fresh_process() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PX_")}
    env.update(KUBERNETES_SERVICE_VARIABLES, PX_PRODUCT_KEY=KEY)
    code = ("import logging; logging.basicConfig();"
            "from px_middleware import PXConfig; print(PXConfig.from_env().product_key)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == KEY
    assert done.stderr == ""  # not even a warning on stderr


@pytest.mark.parametrize(
    ("name", "meant"),
    [("PX_PRODUCT_KYE", "PX_PRODUCT_KEY"), ("PX_INJET", "PX_INJECT"),
     ("PX_SESION_TIMEOUT", "PX_SESSION_TIMEOUT"), ("PX_EXCLUDE_PATH", "PX_EXCLUDE_PATHS")],
)
def test_explicit_typo_error_names_the_setting_meant(name: str, meant: str) -> None:
    with pytest.raises(ValueError, match=f"unknown setting {name} \\(did you mean {meant}\\?\\)"):
        PXConfig.from_mapping({"PX_PRODUCT_KEY": KEY, name: "x"})


def test_from_mapping_falls_back_to_the_environment_for_what_it_lacks() -> None:
    env = {"PX_PRODUCT_KEY": "AP-FROMENV0000-2", "PX_HMAC_SECRET": "from-env",
           "PX_INJECT": "false", "PX_PORT": "tcp://10.0.0.7:80"}
    config = PXConfig.from_mapping({"PX_PRODUCT_KEY": KEY, "PX_INJECT": True}, environ=env)
    assert (config.product_key, config.hmac_secret, config.inject) == (KEY, "from-env", True)
    assert PXConfig.from_mapping({}, environ=env).product_key == "AP-FROMENV0000-2"
    assert PXConfig.from_mapping({"PX_PRODUCT_KEY": KEY}).hmac_secret is None  # no environ


def test_flask_px_reads_app_config_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from flask import Flask

    from px_middleware.flask import PX

    monkeypatch.setenv("PX_HMAC_SECRET", "from-the-environment")
    monkeypatch.setenv("PX_INJECT_ANONYMOUS", "false")
    monkeypatch.setenv("PX_PORT", "tcp://10.0.0.7:80")  # Kubernetes: ignored
    app = Flask(__name__)
    app.config["PX_PRODUCT_KEY"] = KEY
    app.config["PX_INJECT_ANONYMOUS"] = True
    config = PX(app).middleware(app).config
    assert (config.product_key, config.hmac_secret, config.inject_anonymous) == (
        KEY, "from-the-environment", True)

    typo = Flask(__name__)
    typo.config.update(PX_PRODUCT_KEY=KEY, PX_HMAC_SECERT="x")
    with pytest.raises(ValueError, match=r"PX_HMAC_SECERT \(did you mean PX_HMAC_SECRET\?\)"):
        PX(typo)
