"""The patch lifecycle: the one place that says which state may follow which.

::

    planned ──► verifying ──► verified ──► awaiting_approval ──► deploying ──► promoted
       │            │             │               │                  │
       │            ▼             └───────────────┼──(policy: auto)──┘
       └──────────► failed ◄──────────────────────┘ (rejected by a human)      └──► rolled_back

* ``planned``: a plan exists (and, when it changes source, a commit on its
  branch). A plan that needs a human stays here until a human re-plans or
  drops it (``failed``); it cannot start verifying.
* ``verifying``: the sandbox is building and checking it. Needs the commit
  when the plan changes source.
* ``verified``: every applicable check passed (``sandbox["passed"]`` is True;
  the image digest is set for image deliveries).
* ``failed``: planning, committing or verification failed, or a human
  rejected it; ``reason`` says which. Terminal for this plan: the only way
  on is ``replan`` with a new plan, which starts again at ``planned``.
* ``awaiting_approval``: verified, and the policy wants a human to approve.
* ``deploying``: the rollout is under way (straight from ``verified`` when
  the policy says auto, otherwise after approval).
* ``promoted``: the rollout finished; terminal.
* ``rolled_back``: the rollout was rolled back (automatically or by a
  human); terminal, re-plannable like ``failed``.

Moving to the state a record already has is a no-op (idempotent task
re-runs). Every real move appends a ``Transition`` (who, when, why) to the
history, which the audit ledger mirrors. Persistence is not here: the record
is a plain dataclass with ``to_dict``/``from_dict`` for the ``patches`` table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from selfheal.patches.model import PatchPlan

PatchState = Literal[
    "planned", "verifying", "verified", "failed", "awaiting_approval", "deploying", "promoted", "rolled_back"
]
STATES: tuple[PatchState, ...] = (
    "planned",
    "verifying",
    "verified",
    "failed",
    "awaiting_approval",
    "deploying",
    "promoted",
    "rolled_back",
)
TRANSITIONS: dict[PatchState, frozenset[PatchState]] = {
    "planned": frozenset({"verifying", "failed"}),
    "verifying": frozenset({"verified", "failed"}),
    "verified": frozenset({"awaiting_approval", "deploying"}),
    "awaiting_approval": frozenset({"deploying", "failed"}),
    "deploying": frozenset({"promoted", "rolled_back"}),
    "failed": frozenset(),
    "promoted": frozenset(),
    "rolled_back": frozenset(),
}
TERMINAL: frozenset[PatchState] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
REPLANNABLE: frozenset[PatchState] = frozenset({"failed", "rolled_back"})


class InvalidTransition(ValueError):
    """A state change the patch lifecycle does not allow (names the patch and both states)."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Transition:
    from_state: PatchState | None
    to_state: PatchState
    at: datetime
    actor: str
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.from_state,
            "to": self.to_state,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "reason": self.reason,
        }


def check(current: str, new: str, patch: object = "patch") -> bool:
    """Validate ``current -> new``: False for a no-op (same state), True for a move, else raise."""
    if new not in TRANSITIONS:
        raise InvalidTransition(f"{patch}: unknown state {new!r}; expected one of {', '.join(STATES)}")
    if current not in TRANSITIONS:
        raise InvalidTransition(f"{patch}: stored state {current!r} is not a known state")
    if current == new:
        return False
    if new not in TRANSITIONS[current]:  # type: ignore[index]
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (terminal)"  # type: ignore[index]
        raise InvalidTransition(f"{patch}: cannot go from {current!r} to {new!r} (allowed: {allowed})")
    return True


@dataclass
class PatchRecord:
    """A patch as stored: the plan, what was built from it, what happened to it, and its state."""

    plan: PatchPlan
    state: PatchState = "planned"
    commit: str | None = None
    branch: str | None = None
    image: str | None = None  # image digest (sha256:...), set by the sandbox step
    image_tag: str | None = None
    sandbox: dict[str, Any] = field(default_factory=dict)  # {"passed": bool, "checks": {...}, "logs": ...}
    rollout: dict[str, Any] = field(default_factory=dict)  # {"strategy": ..., "steps": [...], "result": ...}
    reason: str = ""  # why it failed / was rolled back / needs a human
    history: list[Transition] = field(default_factory=list)
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    @property
    def id(self) -> str:
        return self.plan.id

    @property
    def recipe(self) -> str:
        return self.plan.recipe

    @classmethod
    def new(cls, plan: PatchPlan, actor: str = "selfheal") -> PatchRecord:
        """A record for a fresh plan; a plan that already failed at planning time starts as ``failed``."""
        rec = cls(plan=plan)
        rec.history.append(
            Transition(None, "planned", rec.created_at, actor, plan.reason if plan.needs_human else "")
        )
        if plan.failed:
            rec.to("failed", actor=actor, reason=plan.reason or "planning failed")
        elif plan.needs_human:
            rec.reason = plan.reason
        return rec

    # ------------------------------------------------------------------ transitions
    def _guard(self, new: str) -> None:
        plan = self.plan
        if new == "verifying":
            if plan.needs_human:
                raise InvalidTransition(
                    f"patch {self.id}: needs a human ({plan.reason}); it cannot be verified"
                )
            if plan.changes_source and not self.commit:
                raise InvalidTransition(f"patch {self.id}: changes source but has no commit to build from")
        elif new == "verified":
            if self.sandbox.get("passed") is not True:
                raise InvalidTransition(
                    f"patch {self.id}: cannot be verified without passing sandbox results"
                )
            if plan.changes_source and "image" in plan.delivery and not self.image:
                raise InvalidTransition(f"patch {self.id}: verified image digest missing")

    def to(self, new: PatchState, *, actor: str = "selfheal", reason: str = "") -> bool:
        """Move to ``new`` (guards included); False when already there. Raises InvalidTransition."""
        if not check(self.state, new, f"patch {self.id}"):
            return False
        self._guard(new)
        now = _now()
        self.history.append(Transition(self.state, new, now, actor, reason))
        self.state = new
        self.updated_at = now
        if new in ("failed", "rolled_back") or (reason and new == "awaiting_approval"):
            self.reason = reason
        return True

    # Named steps, so callers record the data and the move together.
    def committed(self, commit: str, branch: str) -> None:
        if self.state != "planned":
            raise InvalidTransition(
                f"patch {self.id}: a commit can only be recorded while planned (is {self.state})"
            )
        self.commit, self.branch = commit, branch
        self.updated_at = _now()

    def start_verification(self, actor: str = "selfheal") -> bool:
        return self.to("verifying", actor=actor)

    def record_sandbox(
        self,
        passed: bool,
        results: dict[str, Any],
        image: str | None = None,
        image_tag: str | None = None,
        actor: str = "selfheal",
    ) -> None:
        """Store the sandbox outcome and move to verified/failed (the failing check is the reason)."""
        if self.state != "verifying":
            raise InvalidTransition(
                f"patch {self.id}: sandbox results arrive while verifying (is {self.state})"
            )
        self.sandbox = {**results, "passed": bool(passed)}
        self.image = image or self.image
        self.image_tag = image_tag or self.image_tag
        if passed:
            self.to("verified", actor=actor)
        else:
            self.to("failed", actor=actor, reason=str(results.get("reason") or "verification failed"))

    def approve(self, actor: str, reason: str = "approved") -> bool:
        return self.to("deploying", actor=actor, reason=reason)

    def reject(self, actor: str, reason: str) -> bool:
        return self.to("failed", actor=actor, reason=f"rejected by {actor}: {reason}")

    def replan(self, plan: PatchPlan, actor: str = "selfheal", reason: str = "re-planned") -> None:
        """Start over with a new plan after ``failed``/``rolled_back`` (commit, image and results cleared)."""
        if self.state not in REPLANNABLE and not (self.state == "planned" and self.plan.needs_human):
            raise InvalidTransition(
                f"patch {self.id}: only a failed, rolled back or needs-human patch can be "
                f"re-planned (is {self.state})"
            )
        now = _now()
        self.history.append(Transition(self.state, "planned", now, actor, f"{reason} as {plan.id}"))
        self.plan = plan
        self.state = "planned"
        self.commit = self.branch = self.image = self.image_tag = None
        self.sandbox, self.rollout, self.reason = {}, {}, plan.reason if plan.needs_human else ""
        self.updated_at = now

    # ------------------------------------------------------------------ storage form
    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.plan.service,
            "recipe": self.recipe,
            "state": self.state,
            "plan": self.plan.to_dict(),
            "commit": self.commit,
            "branch": self.branch,
            "image": self.image,
            "image_tag": self.image_tag,
            "sandbox": self.sandbox,
            "rollout": self.rollout,
            "reason": self.reason,
            "history": [t.to_dict() for t in self.history],
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatchRecord:
        state = d.get("state")
        if state not in TRANSITIONS:
            raise InvalidTransition(f"patch {d.get('id')}: stored state {state!r} is not a known state")
        return cls(
            plan=PatchPlan.from_dict(d["plan"]),
            state=state,
            commit=d.get("commit"),
            branch=d.get("branch"),
            image=d.get("image"),
            image_tag=d.get("image_tag"),
            sandbox=dict(d.get("sandbox") or {}),
            rollout=dict(d.get("rollout") or {}),
            reason=d.get("reason") or "",
            history=[
                Transition(
                    t["from"], t["to"], datetime.fromisoformat(t["at"]), t["actor"], t.get("reason", "")
                )
                for t in d.get("history") or []
            ],
            created_at=datetime.fromisoformat(d["created_at"]),
            updated_at=datetime.fromisoformat(d["updated_at"]),
        )
