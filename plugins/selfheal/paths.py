"""Where the project's non-code assets live, whether run from a checkout or installed."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = Path(os.environ.get("SELFHEAL_HOME", PACKAGE_DIR.parent.parent))
INCLUDE_DIR = PROJECT_ROOT / "include"
DAGS_DIR = PROJECT_ROOT / "dags"
