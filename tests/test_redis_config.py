"""``PXConfig.redis_url`` / ``PX_REDIS_URL``: validated at start-up, never printed."""

from __future__ import annotations

import pytest

from px_middleware.config import PXConfig

KEY = "AP-TESTTESTTEST-2"


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://:s3cret@cache.internal:6380/2", "unix:///run/r.sock"]
)
def test_redis_urls_are_accepted_and_kept_out_of_repr(url: str) -> None:
    config = PXConfig.from_env({"PX_PRODUCT_KEY": KEY, "PX_REDIS_URL": url})
    assert config.redis_url == url
    assert "s3cret" not in repr(config) and "redis_url" not in repr(config)


def test_an_empty_variable_means_no_redis() -> None:
    assert PXConfig.from_env({"PX_PRODUCT_KEY": KEY, "PX_REDIS_URL": ""}).redis_url is None


@pytest.mark.parametrize("url", ["localhost:6379", "http://localhost:6379", "redis://a b", " "])
def test_a_bad_url_fails_at_start_up_without_echoing_it(url: str) -> None:
    with pytest.raises(ValueError, match="redis_url must look like") as info:
        PXConfig(product_key=KEY, redis_url=url)
    assert url.strip() == "" or url not in str(info.value)
