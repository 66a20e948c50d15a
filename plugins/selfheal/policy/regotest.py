"""Run the policies' own Rego unit tests through regopy.

regopy has no ``opa test``: this runner loads every policy module plus every
``*_test.rego`` file into one interpreter, finds each ``test_*`` rule of the
test packages, and queries it. A test passes only if it evaluates to exactly
``true``; undefined (some condition was false), any other value, or an
evaluation error fails it. ``python -m selfheal.policy.regotest [DIR]`` prints
one line per test and exits 1 on any failure.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from regopy import Interpreter, LogLevel, RegoError
from regopy.rego_shared import rego_get_error

from selfheal.policy.engine import DEFAULT_POLICY_DIR, format_rego_error

_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.M)
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]+)\b", re.M)


@dataclass(frozen=True)
class RegoTestResult:
    file: str
    package: str
    name: str
    passed: bool
    detail: str = ""

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        detail = f": {self.detail}" if self.detail else ""
        return f"{status} {self.file}: data.{self.package}.{self.name}{detail}"


def discover(policy_dir: Path) -> list[tuple[str, str, str]]:
    """(file, package, rule) for every test rule, in file order."""
    found: list[tuple[str, str, str]] = []
    for path in sorted(policy_dir.glob("*_test.rego")):
        src = path.read_text(encoding="utf-8")
        pkg = _PACKAGE.search(src)
        if pkg is None:
            raise ValueError(f"{path}: no package declaration")
        for name in dict.fromkeys(_TEST_RULE.findall(src)):  # a rule may have several bodies
            found.append((path.name, pkg.group(1), name))
    return found


def run_tests(policy_dir: Path | str | None = None) -> list[RegoTestResult]:
    """Evaluate every test rule; a module that does not compile fails all tests with its error.

    All test rules are compiled once into one bundle (one entrypoint each):
    ``Interpreter.query`` would recompile every module per test, seconds each.
    """
    d = Path(policy_dir) if policy_dir else DEFAULT_POLICY_DIR
    tests = discover(d)
    if not tests:
        return []
    sources = {p.name: p.read_text(encoding="utf-8") for p in sorted(d.glob("*.rego"))}
    builder = Interpreter()
    builder.log_level = LogLevel.NONE
    entrypoints = [f"{package.replace('.', '/')}/{name}" for _, package, name in tests]
    try:
        for name, src in sources.items():
            builder.add_module(name, src)
        bundle = builder.build(None, entrypoints)
        if not bundle.ok():
            raise RegoError(rego_get_error(builder._impl))
    except RegoError as e:
        msg = format_rego_error(str(e), sources)
        return [RegoTestResult(f, p, n, False, f"does not compile: {msg}") for f, p, n in tests]
    runner = Interpreter()
    runner.log_level = LogLevel.NONE
    results = []
    for (file, package, name), entrypoint in zip(tests, entrypoints, strict=True):
        try:
            out = runner.query_bundle_entrypoint(bundle, entrypoint)
        except (RegoError, ValueError) as e:  # ValueError: regopy could not decode its own output
            results.append(RegoTestResult(file, package, name, False, format_rego_error(str(e), sources)))
            continue
        if not out.ok():
            detail = format_rego_error(rego_get_error(runner._impl), sources)
            results.append(RegoTestResult(file, package, name, False, detail))
        elif not out.results or not out.results[0].expressions:
            results.append(RegoTestResult(file, package, name, False, "undefined (a condition was false)"))
        elif out.results[0].expressions[0] is not True:
            results.append(RegoTestResult(file, package, name, False, f"= {out.results[0].expressions[0]!r}"))
        else:
            results.append(RegoTestResult(file, package, name, True))
    return results


def main(argv: list[str]) -> int:
    results = run_tests(argv[0] if argv else None)
    for r in results:
        print(r.line())
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
