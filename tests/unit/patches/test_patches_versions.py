"""Version sources: the static one; the pip-backed one's cache and input checks (real index: integration)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from packaging.version import Version

from selfheal.patches.versions import PipIndexVersions, StaticVersions, VersionLookupError, _conflict_reason


def test_static_versions_normalise_names_and_skip_invalid_versions() -> None:
    src = StaticVersions({"Jinja2": ["3.1.3", "not-a-version", "3.1.2"]})
    assert src.versions("jinja2") == [Version("3.1.2"), Version("3.1.3")]
    assert src.versions("JINJA2") == src.versions("jinja2")
    assert src.versions("other") == []


def test_pip_index_versions_uses_a_fresh_disk_cache_without_running_pip(tmp_path: Path) -> None:
    (tmp_path / "jinja2.json").write_text(
        json.dumps({"fetched": time.time(), "versions": ["3.1.6", "3.1.2"]})
    )
    src = PipIndexVersions(python="/nonexistent/python", cache_dir=tmp_path)
    assert src.versions("Jinja2") == [Version("3.1.2"), Version("3.1.6")]
    assert src.lookups == 0


def test_stale_cache_is_refetched_and_a_broken_python_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "jinja2.json").write_text(json.dumps({"fetched": 0, "versions": ["3.1.2"]}))
    src = PipIndexVersions(python="/nonexistent/python", cache_dir=tmp_path)
    with pytest.raises(VersionLookupError, match="jinja2: cannot run /nonexistent/python"):
        src.versions("jinja2")
    with pytest.raises(VersionLookupError, match="not a valid package name"):
        src.versions("jinja2; rm -rf /")


def test_pip_conflict_output_becomes_one_line() -> None:
    out = (
        "Collecting x\nERROR: Cannot install -r /tmp/r/requirements.txt (line 2) and markupsafe==1.1.1 "
        "because "
        "these package versions have conflicting dependencies.\n\nThe conflict is caused by:\n"
        "    The user requested markupsafe==1.1.1\n    jinja2 3.1.6 depends on MarkupSafe>=2.0\n\n"
        "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io\n"
    )
    assert _conflict_reason(out, "/tmp/r", "requirements.txt") == (
        "requirements.txt: pip cannot install the upgraded requirements: "
        "The user requested markupsafe==1.1.1; "
        "jinja2 3.1.6 depends on MarkupSafe>=2.0"
    )
