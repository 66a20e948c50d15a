"""Secrets never reach the ledger: redaction by key and by value shape."""

from __future__ import annotations

import pytest

from selfheal.audit.redact import MAX_STRING, REDACTED, is_secret_key, redact, redact_text


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "Password",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "X-Auth-Token",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "authorization",
        "Proxy-Authorization",
        "cookie",
        "Set-Cookie",
        "private_key",
        "privateKey",
        "credentials",
        "aws_secret_access_key",
        "passphrase",
        "session_id",
        "dsn",
        "connection_string",
    ],
)
def test_secret_keys_are_recognized(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["finding_id", "severity", "author", "reasons", "path", "service", "decision"]
)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)


def test_values_under_secret_keys_are_replaced_whatever_their_type() -> None:
    payload = {
        "password": "hunter2",
        "headers": {"Authorization": "Bearer abc", "Cookie": "sid=1", "Accept": "*/*"},
        "api_key": 12345,
        "credentials": {"user": "u", "pass": "p"},
        "token": None,
        "password_set": True,
        "items": [{"secret": "s"}, "plain"],
    }
    assert redact(payload) == {
        "password": REDACTED,
        "headers": {"Authorization": REDACTED, "Cookie": REDACTED, "Accept": "*/*"},
        "api_key": REDACTED,
        "credentials": REDACTED,
        "token": None,
        "password_set": True,
        "items": [{"secret": REDACTED}, "plain"],
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:s3cr3t@db:5432/triage", f"postgresql://app:{REDACTED}@db:5432/triage"),
        ("redis://:pw@cache:6379/0", f"redis://:{REDACTED}@cache:6379/0"),
        ("https://example.org/a?b=c", "https://example.org/a?b=c"),
        ("https://user@example.org/", "https://user@example.org/"),
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nCookie: sid=abc; t=1\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
            f"GET /x HTTP/1.1\r\nHost: a\r\nCookie: {REDACTED}\r\nAuthorization: {REDACTED}\r\n\r\n",
        ),
        ("/login?user=a&password=hunter2&next=/", f"/login?user=a&password={REDACTED}&next=/"),
        ('{"db_password": "x1"}', f'{{"db_password": "{REDACTED}"}}'),
        ("curl -H 'Authorization: Bearer abc.def-123'", f"curl -H 'Authorization: Bearer {REDACTED}'"),
        ("basic authentication failed", "basic authentication failed"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sflKxwRJSMeKKF2QT4fwpM end",
            f"jwt {REDACTED} end",
        ),
        ("key AKIAIOSFODNN7EXAMPLE used", f"key {REDACTED} used"),
        ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", f"gh {REDACTED}"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nxyz\n-----END RSA PRIVATE KEY-----\nafter",
            f"-----BEGIN RSA PRIVATE KEY-----{REDACTED}-----END RSA PRIVATE KEY-----\nafter",
        ),
        ("SQL injection in parameter id", "SQL injection in parameter id"),
    ],
)
def test_secret_shapes_inside_text_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_secret_shapes_are_masked_under_ordinary_keys_and_in_lists() -> None:
    out = redact({"evidence": ["x", "mysql://root:toor@10.0.0.5/app"], "note": "token=abcdef123"})
    assert out == {"evidence": ["x", f"mysql://root:{REDACTED}@10.0.0.5/app"], "note": f"token={REDACTED}"}


def test_long_strings_are_cut() -> None:
    out = redact_text("A" * (MAX_STRING + 100))
    assert out.startswith("A" * MAX_STRING) and out.endswith("[truncated 100 chars]")
