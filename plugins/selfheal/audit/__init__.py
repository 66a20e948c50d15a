"""Tamper-evident audit ledger: hash-chained, append-only ``audit_log``.

Call sites use ``append`` (one entry), ``append_many`` (a batch under one
lock) and ``verify``; see ``ledger`` for the chain rules and ``canonical``
for the exact bytes that are hashed.
"""

from selfheal.audit.ledger import (
    ACTIONS,
    AuditEntry,
    AuditError,
    Break,
    NewEntry,
    VerifyResult,
    append,
    append_many,
    entries,
    head,
    subject,
    verify,
)

__all__ = [
    "ACTIONS",
    "AuditEntry",
    "AuditError",
    "Break",
    "NewEntry",
    "VerifyResult",
    "append",
    "append_many",
    "entries",
    "head",
    "subject",
    "verify",
]
