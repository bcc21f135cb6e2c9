"""``user_hash`` against published HMAC-SHA256 vectors (RFC 4231), not against itself."""

from __future__ import annotations

import base64

import pytest

from px_middleware import user_hash

# RFC 4231 section 4.3, test case 2: key "Jefe", data "what do ya want for nothing?".
RFC4231_CASE_2 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
# RFC 4231 section 4.2, test case 1: key 0x0b * 20, data "Hi There".
RFC4231_CASE_1 = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"


def test_rfc_4231_case_2_hex() -> None:
    assert user_hash("what do ya want for nothing?", "Jefe") == RFC4231_CASE_2
    assert user_hash("what do ya want for nothing?", "Jefe", "hex") == RFC4231_CASE_2


def test_rfc_4231_case_1_hex() -> None:
    assert user_hash("Hi There", "\x0b" * 20) == RFC4231_CASE_1


def test_base64_is_the_same_digest_base64_encoded() -> None:
    expected = base64.b64encode(bytes.fromhex(RFC4231_CASE_2)).decode()
    assert expected == "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
    assert user_hash("what do ya want for nothing?", "Jefe", "base64") == expected


def test_non_ascii_key_and_value_are_hashed_as_utf8() -> None:
    # Vectors from `printf ... | openssl dgst -sha256 -hmac ...` (UTF-8 terminal).
    assert user_hash("é", "clé") == (
        "379aed3ea9ad6435d18a87afff6c5836f34e35ead0bc0a014c25014a0f008b5b"
    )
    assert user_hash("e\u0301", "clé") != user_hash("é", "clé")  # no normalisation


def test_base64_vector_from_openssl() -> None:
    assert user_hash("user-42", "s3cret", "base64") == (
        "ETbEgHO9K6ZPKhiJX/J+z6EeJMzS2GlyrOFImDZoqZI="
    )


def test_lowercase_hex_of_64_characters() -> None:
    digest = user_hash("user-1", "secret")
    assert len(digest) == 64 and digest == digest.lower()
    int(digest, 16)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty secret"):
        user_hash("user-1", "")


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown userHash encoding 'base32'"):
        user_hash("user-1", "secret", "base32")  # type: ignore[arg-type]
