"""The patch engine: findings -> patch plans -> commits, and the patch lifecycle. Pure Python, no Airflow.

* ``model``: ``PatchPlan`` and the ``Verification`` data the sandbox consumes.
* ``planner``: ``plan_patches`` / ``plan_repository``, the entry points (recipe selection and grouping).
* ``recipes``: one module per fix (dependency_upgrade, base_image_refresh, config_hardening,
  virtual_patch, code_fix); ``recipes.PlanContext`` carries the injectable version/image sources.
* ``git``: ``commit_plan``, one commit with trailers on a new branch, made in a private clone.
* ``state``: ``PatchRecord`` and the lifecycle (planned -> verifying -> ... -> promoted | rolled_back).
* ``versions``, ``requirements``, ``attack``, ``diffs``: the pieces the recipes share.
"""

from selfheal.patches.model import PatchPlan, PlanError, Verification
from selfheal.patches.state import InvalidTransition, PatchRecord

__all__ = ["InvalidTransition", "PatchPlan", "PatchRecord", "PlanError", "Verification"]
