"""The policies' own Rego unit tests (include/policies/*_test.rego), run through regopy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from selfheal.policy.engine import DEFAULT_POLICY_DIR
from selfheal.policy.regotest import discover, main, run_tests

RESULTS = {(r.file, r.name): r for r in run_tests(DEFAULT_POLICY_DIR)}


def test_every_policy_has_tests() -> None:
    policies = {p.stem for p in DEFAULT_POLICY_DIR.glob("*.rego") if not p.stem.endswith("_test")}
    tested = {f.removesuffix("_test.rego") for f, _, _ in discover(DEFAULT_POLICY_DIR)}
    assert policies - {"lib"} <= tested
    assert len(RESULTS) >= 30


@pytest.mark.parametrize("key", sorted(RESULTS), ids=lambda k: f"{k[0]}::{k[1]}")
def test_rego(key: tuple[str, str]) -> None:
    result = RESULTS[key]
    assert result.passed, result.line()


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, d)
    return d


def test_runner_fails_a_test_whose_expectation_the_policy_breaks(policy_copy: Path) -> None:
    """The tests have teeth: let code fixes go out on their own and the code-fix test fails."""
    rego = policy_copy / "remediation.rego"
    rego.write_text(rego.read_text().replace('if recipe == "code_fix"', 'if recipe == "never"'))
    failed = {r.name for r in run_tests(policy_copy) if not r.passed}
    assert failed == {"test_code_fix_always_needs_approval"}


def test_runner_reports_false_undefined_and_compile_errors(
    policy_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    (policy_copy / "extra_test.rego").write_text(
        "package extra_test\nimport rego.v1\n"
        "test_false if { 1 == 2 }\ntest_value := 3\ntest_true if { true }\n"
    )
    by_name = {r.name: r for r in run_tests(policy_copy)}
    assert by_name["test_false"].detail == "undefined (a condition was false)"
    assert not by_name["test_value"].passed and by_name["test_value"].detail == "= 3"
    assert by_name["test_true"].passed
    assert main([str(policy_copy)]) == 1
    assert "FAIL extra_test.rego: data.extra_test.test_false" in capsys.readouterr().out

    (policy_copy / "extra_test.rego").write_text("package extra_test\nimport rego.v1\ntest_x if {\n")
    results = run_tests(policy_copy)
    assert results and not any(r.passed for r in results)
    assert "does not compile: extra_test.rego:" in results[0].detail
