"""What a sandbox verification produced: one record per check, JSON-ready for the patch record.

Outputs are bounded (head and tail kept) because they come from the image under
test and from a scanner: a runaway test suite must not bloat the patches table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

CheckStatus = Literal["passed", "failed", "skipped"]
CHECK_ORDER: tuple[str, ...] = ("tests", "exploit_replay", "rescan", "dependency_version", "latency")
MAX_OUTPUT_CHARS = 8_000
_CUT = "\n[... {n} characters cut ...]\n"


def truncate(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """``text`` in at most ``limit`` characters: the head (context) and the tail (the verdict).

    Idempotent (a stored, already cut output is not cut again when the record is loaded).
    """
    if len(text) <= limit:
        return text
    keep = limit - len(_CUT.format(n=len(text)))
    head = keep // 4
    tail = keep - head
    return text[:head] + _CUT.format(n=len(text) - head - tail) + text[-tail:]


@dataclass
class CheckResult:
    """One check's verdict. ``reason`` is one line: why it failed or was skipped ("" when passed)."""

    name: str
    status: CheckStatus
    reason: str = ""
    duration_s: float = 0.0
    output: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.output = truncate(self.output)
        self.duration_s = round(self.duration_s, 3)
        # JSON form now (tuples become lists; anything exotic becomes text), so the stored record and
        # this object are equal and a non-serializable value fails here, not when the record is written.
        self.details = json.loads(json.dumps(self.details, default=str))

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class VerificationResult:
    """The sandbox's verdict on one patch; ``passed`` only if every applicable check passed.

    ``reason`` names the failed stage or check and why, e.g.
    ``"exploit_replay: exploit still reproduces on the patched image: GET /api/items?..."``.
    ``image_id`` is the content address of the built image (``sha256:...``);
    ``image_digest`` is its registry digest, known only once pushed.
    """

    patch_id: str
    service: str
    commit: str = ""
    baseline_commit: str = ""
    sandbox_id: str = ""
    image: str = ""
    image_id: str = ""
    image_digest: str | None = None
    baseline_image: str = ""
    baseline_image_id: str = ""
    passed: bool = False
    reason: str = ""
    failed_check: str | None = None
    checks: list[CheckResult] = field(default_factory=list)
    build: dict[str, Any] = field(default_factory=dict)
    cleanup: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerificationResult:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["checks"] = [CheckResult(**c) for c in kw.get("checks", [])]
        return cls(**kw)
