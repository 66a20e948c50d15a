"""Finding -> row encoding: COPY text escaping, bounds, the content hash."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from selfheal.findings.fingerprint import fingerprint
from selfheal.findings.model import Finding, Location, Package
from selfheal.triage import rows


def _decode_copy(line: str) -> list[str | None]:
    """Reference decoder for PostgreSQL COPY text format (the subset we emit)."""
    out: list[str | None] = []
    for field in line.split("\t"):
        if field == "\\N":
            out.append(None)
            continue
        buf, i = [], 0
        while i < len(field):
            ch = field[i]
            if ch == "\\":
                nxt = field[i + 1]
                buf.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[nxt])
                i += 2
            else:
                buf.append(ch)
                i += 1
        out.append("".join(buf))
    return out


def _expected(v: object) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, tuple):
        import json

        return json.dumps(list(v))
    return str(v).replace("\x00", "\ufffd")


values_st = st.lists(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**31), 2**31),
        st.text(),
        st.floats(allow_nan=False),
        st.tuples(st.text(max_size=5)),
    ),
    min_size=1,
    max_size=8,
)


@given(values_st)
def test_copy_line_round_trips(values: list) -> None:
    line = rows.encode_line(tuple(values))
    assert "\n" not in line and "\r" not in line
    decoded = _decode_copy(line)
    assert decoded == [_expected(v) for v in values]


def test_fast_and_slow_paths_agree() -> None:
    vals = ("a\tb", None, "c\\d\ne\rf", True, 3, 2.5, ("CVE-2024-1234",), "")
    assert rows._fast_line(vals) == "\t".join(rows.encode(v) for v in vals)
    assert rows._fast_line(("x\x01y",)) is None  # a value holding the NULL marker takes the slow path
    assert rows.encode_line(("x\x01y", None)) == "x\x01y\t\\N"
    assert rows.encode_line(("nul\x00here",)) == "nul\ufffdhere"


def _finding(**kw) -> Finding:
    base = dict(
        scanner="zap",
        rule_id="40018",
        title="SQL Injection",
        severity="high",
        kind="web",
        cwe=89,
        location=Location(url="https://x/items/12?q=1", method="get", path="/items/12", param="q"),
        evidence="ev",
    )
    base.update(kw)
    f = Finding(**base)
    f.fingerprint = fingerprint(f, "shop")
    return f


def test_content_hash_ignores_nothing_the_scanner_owns() -> None:
    a = rows.copy_rows([_finding()], "shop")[0]
    same = rows.copy_rows(
        [_finding(location=Location(url="https://x/items/12?q=1", method="get", path="/items/12", param="q"))], "shop"
    )[0]
    changed = rows.copy_rows([_finding(evidence="other")], "shop")[0]
    assert a == same
    assert a[0] == changed[0]  # same identity ...
    assert a[1] != changed[1]  # ... different content, different hash


def test_values_are_normalized_and_bounded() -> None:
    f = _finding(title="T" * 5000, solution="S" * 20000, cvss_score=11.0, epss=float("nan"), cves=("CVE-2024-1234",))
    ((values, _),) = [r[1] for r in rows.value_rows([f], "shop")]
    v = dict(zip(rows.CONTENT_NAMES, values, strict=True))
    assert v["method"] == "GET"
    assert v["path_template"] == "/items/{id}"
    assert len(v["title"]) < 1100 and len(v["solution"]) < 4200
    assert v["cvss_score"] is None and v["epss"] is None
    assert v["cves"] == ("CVE-2024-1234",)
    dep = Finding(
        scanner="inspector",
        rule_id="CVE-1",
        title="t",
        severity="low",
        kind="dependency",
        package=Package(
            name="django", version="3.2", fixed_version="3.2.9", ecosystem="pypi", file_path="requirements.txt"
        ),
    )
    dep.fingerprint = fingerprint(dep, "shop")
    ((dvalues, _),) = [r[1] for r in rows.value_rows([dep], "shop")]
    d = dict(zip(rows.CONTENT_NAMES, dvalues, strict=True))
    assert (d["package_name"], d["fixed_version"], d["file_path"], d["path_template"]) == (
        "django",
        "3.2.9",
        "requirements.txt",
        None,
    )


def test_duplicates_in_one_report_merge_their_sources() -> None:
    a = _finding()
    b = _finding(
        location=Location(url="https://x/items/99", method="GET", path="/items/99", param="q"), evidence="second"
    )
    c = _finding(scanner="wapiti", rule_id="SQL Injection")
    out = rows.value_rows([a, b, c], "shop")
    assert len(out) == 1
    _fp, (values, _), sources, rule_ids = out[0]
    assert values[rows.CONTENT_NAMES.index("evidence")] == "ev"  # first occurrence wins
    assert sources == {"zap", "wapiti"} and rule_ids == {"zap:40018", "wapiti:SQL Injection"}


def test_relined_replaces_only_the_merged_columns() -> None:
    ((_fp, line, src, rules),) = rows.copy_rows([_finding()], "shop")
    new = rows.relined(line, (src, rules), (src | {"wapiti"}, rules), True)
    assert new.endswith(b'\t["wapiti", "zap"]\t["zap:40018"]\tt\n')
    assert new.split(b"\t")[:-3] == line.split(b"\t")[:-3]


SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "scanner-samples"


def _reference_line(f: Finding, service: str | None) -> str:
    return rows.encode_line(rows.row_values(f, service))


def test_fast_copy_text_matches_the_reference_on_real_samples() -> None:
    from selfheal.findings import parse_bytes

    seen = 0
    for p in sorted(SAMPLES.rglob("*")):
        if p.suffix not in (".xml", ".json", ".sarif") or p.name == "empty_with_error.json":
            continue
        for f in parse_bytes(p.read_bytes(), p.name, service="shop"):
            fast = rows._fast_copy_text(f, "shop")
            assert fast is not None, f"{p.name}: {f.rule_id} took the slow path"
            assert fast == _reference_line(f, "shop")
            seen += 1
    assert seen > 100


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", "\x01", "\x00", "a\tb", "x" * 5000, "back\\slash", "ß" * 9]
)


@given(
    title=_text,
    evidence=_text,
    param=_text | st.none(),
    method=_text | st.none(),
    rule=_text,
    cvss=st.none() | st.floats(allow_nan=True) | st.integers(-5, 15),
    kev=st.sampled_from([None, True, False, 1]),
    cwe=st.none() | st.integers(-3, 2**40),
    line=st.none() | st.integers(-(2**40), 2**40),
    cves=st.lists(_text, max_size=3),
    service=_text | st.none(),
)
def test_copy_rows_equal_the_reference_encoding(
    title, evidence, param, method, rule, cvss, kev, cwe, line, cves, service
) -> None:
    f = Finding(
        scanner="zap",
        rule_id=rule,
        title=title,
        severity="high",
        kind="web",
        cwe=cwe,
        cves=tuple(cves),
        cvss_score=cvss,
        kev=kev,
        evidence=evidence,
        location=Location(url="https://x/a/1", method=method, path="/a/1", param=param, line=line),
    )
    f.fingerprint = "f" * 64
    ((_fp, line_bytes, _src, _rules),) = rows.copy_rows([f], service)
    fields = line_bytes.decode("utf-8", "surrogatepass").rstrip("\n").split("\t")
    content = "\t".join(fields[1:-4])
    assert content == _reference_line(f, service)
    decoded = _decode_copy(content)
    assert len(decoded) == len(rows.CONTENT_NAMES)
    v = dict(zip(rows.CONTENT_NAMES, decoded, strict=True))
    for col in ("scanner", "kind", "rule_id", "title", "severity", "evidence", "solution"):
        assert v[col] is not None, col  # NOT NULL columns never become NULL
