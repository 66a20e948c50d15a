"""Remove secrets from audit payloads before they are hashed and stored.

The ledger can never be edited, so a secret written once stays forever: every
payload passes through ``redact`` on its way in. Two layers:

* by key: the value of any member whose name looks like a credential
  (password, secret, token, api_key, authorization, cookie, private_key, ...)
  is replaced by ``[REDACTED]`` whatever its type (``null`` and booleans are
  kept: "password_set": true says nothing secret);
* by value: inside every string, wherever it sits, credentials with a
  recognizable shape are masked: passwords in URLs (``scheme://user:pw@host``),
  ``Authorization``/``Cookie`` header lines (scanner evidence often carries
  raw HTTP requests), ``Bearer``/``Basic`` credentials, ``password=...`` style
  pairs, PEM private keys, and well-known token formats (JWT, AWS access key
  ids, GitHub and Slack tokens).

Hand-written rather than a secret scanner such as detect-secrets: those scan
files for high-entropy strings and pull in plugins; here the structure (the
key names) is known and the value patterns are few, and the rules must be
deterministic, because the redacted value is what gets hashed.
Long strings are cut at ``MAX_STRING`` characters: payloads may quote
attacker-controlled scanner output and the ledger is not a blob store.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"
MAX_STRING = 8192

# Compared after lower-casing and dropping "-", "_", " " and ".": "X-Api-Key" -> "xapikey".
_SECRET_KEY = re.compile(
    r"(password|passwd|passphrase|pwd|secret|token|apikey|authorization|cookie|privatekey|credential"
    r"|sessionid|sessionkey|accesskey|signingkey|encryptionkey|dsn|connectionstring|^auth$|^pass$|^pin$)"
)
_NORMALIZE_KEY = re.compile(r"[-_ .]")

_CREDENTIAL_SHAPE = re.compile(r"[0-9+/=._~-]|.[A-Z]")


def _scheme_credential(m: re.Match[str]) -> str:
    """'Bearer <token>': mask the token unless it is a plain word (digits, symbols or inner capitals)."""
    if _CREDENTIAL_SHAPE.search(m.group(3)):
        return f"{m.group(1)}{m.group(2)}{REDACTED}"
    return m.group(0)


# (pattern, replacement, triggers): a rule's regex runs only when one of its lower-case trigger
# substrings occurs in the text, so ordinary strings cost one lower() and a few `in` tests.
_VALUE_RULES: tuple[tuple[re.Pattern[str], Any, tuple[str, ...]], ...] = (
    # PEM blocks first: they span lines that the other rules would cut through.
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
        ),
        f"-----BEGIN \\1PRIVATE KEY-----{REDACTED}-----END \\1PRIVATE KEY-----",
        ("private key",),
    ),
    # scheme://user:password@host -> scheme://user:[REDACTED]@host
    # (schemes start only where a scheme run starts and are at most 32 chars: linear on long text)
    (
        re.compile(r"((?<![a-zA-Z0-9+.\-])[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://[^/\s:@?#]*:)([^@\s/?#]+)@"),
        f"\\1{REDACTED}@",
        ("://",),
    ),
    # Header lines: the whole value (cookies, any auth scheme).
    (
        re.compile(
            r"(?im)^([ \t]*(?:proxy-)?(?:authorization|cookie|set-cookie|x-api-key|x-auth-token|x-csrf-token)"
            r"[ \t]*:[ \t]*)[^\r\n]+"
        ),
        f"\\1{REDACTED}",
        ("authorization", "cookie", "x-api-key", "x-auth-token", "x-csrf-token"),
    ),
    # Credentials outside header lines ("curl -H 'Authorization: Bearer ...'", JSON-in-text);
    # _scheme_credential keeps prose such as "basic authentication" intact.
    (
        re.compile(r"\b((?i:bearer|basic|digest))([ \t]+)([A-Za-z0-9\-._~+/]{8,}=*)"),
        _scheme_credential,
        ("bearer", "basic", "digest"),
    ),
    # key=value / key: value pairs in query strings, config text, log lines.
    (
        re.compile(
            r"(?i)\b((?:[a-z0-9]+[_-])?(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key"
            r"|private[_-]?key|session[_-]?id|auth)\b[\"']?[ \t]*[=:][ \t]*[\"']?)([^\s&;,\"'<>]+)"
        ),
        f"\\1{REDACTED}",
        ("pass", "pwd", "secret", "token", "key", "session", "auth"),
    ),
    # Well-known token shapes wherever they appear.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED, ("eyj",)),  # JWT
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED, ("akia", "asia")),  # AWS access key id
    (
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})\b"),
        REDACTED,
        ("gh",),
    ),  # GitHub
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"), REDACTED, ("xox",)),  # Slack
)


def is_secret_key(key: str) -> bool:
    """Whether a member named ``key`` holds a credential."""
    return bool(_SECRET_KEY.search(_NORMALIZE_KEY.sub("", key.lower())))


def redact_text(text: str) -> str:
    """Mask credentials with a recognizable shape inside free text, and bound its length."""
    if len(text) > MAX_STRING:
        text = f"{text[:MAX_STRING]}...[truncated {len(text) - MAX_STRING} chars]"
    low = text.lower()
    for pattern, repl, triggers in _VALUE_RULES:
        if any(t in low for t in triggers):
            text = pattern.sub(repl, text)
            low = text.lower()
    return text


def redact(value: Any) -> Any:
    """A copy of a (normalized) JSON value with every secret replaced; see the module docstring."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if is_secret_key(k) and v is not None and not isinstance(v, bool):
                out[k] = REDACTED
            else:
                out[k] = redact(v)
        return out
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
