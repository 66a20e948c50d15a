"""PatchStore: the ``patches`` table as the one place a patch's state lives.

Every remediation step reads the patch from here and writes it back in one
short transaction with the row locked (``edit``), so a retried or cleared
task sees what the previous attempt already did and does not do it again:
the table is keyed by the plan id, which is deterministic (same findings,
same base commit, same diff give the same id), so planning the same findings
twice finds the existing row instead of making a second patch.

Column mapping (migration 0003): ``image`` holds the image tag the sandbox
built and the rollout deploys, ``image_digest`` its content id
(``PatchRecord.image``); ``policy`` the policy decisions (``{"pre": ...,
"final": ...}``), ``approval`` who approved or rejected and when.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from selfheal.patches.state import PatchRecord
from selfheal.pipeline_state import patches
from selfheal.remediation.errors import UnknownPatch


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: NaN/inf become None (JSONB refuses them), unknown objects become text."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return clean(json.loads(json.dumps(value, default=str, allow_nan=True)))


@dataclass
class StoredPatch:
    """A patch record plus what the table keeps beside it."""

    record: PatchRecord
    finding_ids: list[int] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)
    approval: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def service(self) -> str:
        return self.record.plan.service

    @property
    def decision(self) -> str | None:
        """The latest policy decision (after the sandbox if there is one)."""
        for phase in ("final", "pre"):
            d = self.policy.get(phase)
            if isinstance(d, dict) and d.get("decision"):
                return str(d["decision"])
        return None


def _row(sp: StoredPatch) -> dict[str, Any]:
    r = sp.record
    d = r.to_dict()
    return {
        "id": r.id,
        "service": r.plan.service,
        "recipe": r.recipe,
        "state": r.state,
        "finding_ids": [int(i) for i in sp.finding_ids],
        "plan": jsonable(d["plan"]),
        "policy": jsonable(sp.policy) if sp.policy else None,
        "branch": r.branch,
        "commit": r.commit,
        "image": r.image_tag,
        "image_digest": r.image,
        "sandbox": jsonable(r.sandbox) if r.sandbox else None,
        "rollout": jsonable(r.rollout) if r.rollout else None,
        "approval": jsonable(sp.approval) if sp.approval else None,
        "reason": r.reason or "",
        "history": d["history"],
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def _iso(v: datetime) -> str:
    return (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()


def _from_row(m: Any) -> StoredPatch:
    rec = PatchRecord.from_dict(
        {
            "id": m["id"],
            "state": m["state"],
            "plan": m["plan"],
            "commit": m["commit"],
            "branch": m["branch"],
            "image": m["image_digest"],
            "image_tag": m["image"],
            "sandbox": m["sandbox"] or {},
            "rollout": m["rollout"] or {},
            "reason": m["reason"] or "",
            "history": m["history"] or [],
            "created_at": _iso(m["created_at"]),
            "updated_at": _iso(m["updated_at"]),
        }
    )
    ids = [int(i) for i in (m["finding_ids"] or []) if isinstance(i, int | str) and str(i).isdigit()]
    return StoredPatch(rec, ids, dict(m["policy"] or {}), dict(m["approval"] or {}))


class PatchStore:
    """Load, add and edit patches; every write is one transaction."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get(self, patch_id: str) -> StoredPatch | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(patches).where(patches.c.id == patch_id)).first()
        return _from_row(row._mapping) if row else None

    def require(self, patch_id: str) -> StoredPatch:
        sp = self.get(patch_id)
        if sp is None:
            raise UnknownPatch(f"patch {patch_id}: no such patch in the patches table")
        return sp

    def add(self, sp: StoredPatch) -> tuple[StoredPatch, bool]:
        """Insert unless a patch with this id exists; returns (the stored patch, created)."""
        row = _row(sp)
        with self.engine.begin() as c:
            if c.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = insert(patches).values(**row).on_conflict_do_nothing(index_elements=["id"]).returning(patches.c.id)
            inserted = c.execute(stmt).first() is not None  # rowcount is -1 here (psycopg, SQLAlchemy 2.1)
        return (sp, True) if inserted else (self.require(sp.id), False)

    @contextmanager
    def edit(self, patch_id: str) -> Iterator[StoredPatch]:
        """The patch with its row locked until the block ends; written back when the block succeeds."""
        with self.engine.begin() as c:
            row = c.execute(sa.select(patches).where(patches.c.id == patch_id).with_for_update()).first()
            if row is None:
                raise UnknownPatch(f"patch {patch_id}: no such patch in the patches table")
            sp = _from_row(row._mapping)
            yield sp
            values = _row(sp)
            values.pop("id")
            values.pop("created_at")
            values["updated_at"] = datetime.now(UTC)
            c.execute(patches.update().where(patches.c.id == patch_id).values(**values))

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        service: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[StoredPatch]:
        q = sa.select(patches).order_by(patches.c.created_at, patches.c.id)
        if states is not None:
            q = q.where(patches.c.state.in_(list(states)))
        if service is not None:
            q = q.where(patches.c.service == service)
        if ids is not None:
            q = q.where(patches.c.id.in_(list(ids)))
        with self.engine.connect() as c:
            return [_from_row(r._mapping) for r in c.execute(q)]

    def covered_finding_ids(self, recipes_excluded: Iterable[str] = ("virtual_patch",)) -> set[int]:
        """Findings some (non-mitigation) patch already addresses, in any state: they are not planned again.

        A rolled-back or rejected patch keeps its findings covered on purpose: they wait for a human
        (``selfheal_reviewed_patch``, or a re-plan), instead of being re-planned into the same patch
        every run.
        """
        q = sa.select(patches.c.finding_ids).where(patches.c.recipe.not_in(list(recipes_excluded)))
        out: set[int] = set()
        with self.engine.connect() as c:
            for (ids,) in c.execute(q):
                out.update(int(i) for i in (ids or []) if str(i).isdigit())
        return out
