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


def _one(f: Finding, service: str | None = "shop") -> tuple[str, bytes, bytes]:
    enc = rows.encode_report([f], service)
    assert len(enc.fps) == len(enc.keys) == len(enc.lines) == 1
    return enc.fps[0], enc.keys[0], enc.lines[0]


def test_content_hash_ignores_nothing_the_scanner_owns() -> None:
    a = _one(_finding())
    same = _one(_finding(location=Location(url="https://x/items/12?q=1", method="get", path="/items/12", param="q")))
    changed = _one(_finding(evidence="other"))
    assert a == same
    assert a[0] == changed[0]  # same identity ...
    assert a[2] != changed[2]  # ... different content ...
    assert a[1].split(b"\t")[2] != changed[1].split(b"\t")[2]  # ... different hash
    # The key line is the identity, the owner, the content hash and the merged sets.
    fp, scanner, digest, sources, rule_ids = a[1].split(b"\t")
    assert (fp.decode(), scanner, sources, rule_ids) == (a[0], b"zap", b'["zap"]', b'["zap:40018"]')
    # The content line ends with the same, then the default staging tail.
    assert a[2].endswith(rows.STAGE_TAIL)
    assert rows.unstaged(a[2]).split(b"\t")[-3:] == [digest, sources, rule_ids]


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


def test_duplicates_in_one_report_merge_their_sources_on_the_copy_path() -> None:
    a = _finding()
    b = _finding(
        location=Location(url="https://x/items/99", method="GET", path="/items/99", param="q"), evidence="second"
    )
    c = _finding(scanner="wapiti", rule_id="SQL Injection")
    enc = rows.encode_report([a, b, c], "shop")
    assert enc.fps == [a.fingerprint]
    assert enc.sets(0) == ({"zap", "wapiti"}, {"zap:40018", "wapiti:SQL Injection"})
    assert rows.unstaged(enc.lines[0]).endswith(b'\t["wapiti", "zap"]\t["wapiti:SQL Injection", "zap:40018"]')
    assert enc.keys[0].endswith(b'\t["wapiti", "zap"]\t["wapiti:SQL Injection", "zap:40018"]')
    assert enc.lines[0].split(b"\t")[rows.INCOMING_NAMES.index("evidence")] == b"ev"  # first occurrence wins
    # the same source twice adds nothing
    assert rows.encode_report([a, b], "shop").sets(0) == ({"zap"}, {"zap:40018"})


def test_rekey_and_reline_replace_only_the_merged_columns() -> None:
    _fp, key, line = _one(_finding())
    sets = (frozenset({"zap", "wapiti"}), frozenset({"zap:40018"}))
    new_line = rows.reline(line, sets)
    assert new_line.endswith(b'\t["wapiti", "zap"]\t["zap:40018"]')
    assert new_line.split(b"\t")[:-2] == rows.unstaged(line).split(b"\t")[:-2]
    new_key = rows.rekey(key, sets, False)
    assert new_key.split(b"\t")[:3] == key.split(b"\t")[:3]
    assert new_key.endswith(b'\t["wapiti", "zap"]\t["zap:40018"]')
    merge_only = rows.rekey(key, sets, True).split(b"\t")
    assert merge_only[1] == b"" and merge_only[0] == key.split(b"\t")[0]  # a merge-only row owns nothing


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
def test_encoded_lines_equal_the_reference_encoding(
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
    _fp, key, line_bytes = _one(f, service)
    assert line_bytes.endswith(rows.STAGE_TAIL)
    fields = rows.unstaged(line_bytes).decode("utf-8", "surrogatepass").split("\t")
    content = "\t".join(fields[1:-3])
    assert key.decode("utf-8", "surrogatepass").split("\t")[2] == fields[-3]  # the same content hash
    assert content == _reference_line(f, service)
    decoded = _decode_copy(content)
    assert len(decoded) == len(rows.CONTENT_NAMES)
    v = dict(zip(rows.CONTENT_NAMES, decoded, strict=True))
    for col in ("scanner", "kind", "rule_id", "title", "severity", "evidence", "solution"):
        assert v[col] is not None, col  # NOT NULL columns never become NULL


def test_fast_path_checks_the_large_bounds_only_on_long_lines() -> None:
    # Long but within every bound: still the fast path, identical to the reference.
    ok = _finding(title="T" * 1000, evidence="E" * 4000, solution="S" * 4000)
    assert rows._fast_copy_text(ok, "shop") == _reference_line(ok, "shop")
    # One value over its bound: the careful path (which clips it), for each large bound.
    for over in (
        {"title": "T" * 1025},
        {"evidence": "E" * 4097},
        {"solution": "S" * 4097},
        {"rule_id": "R" * 2049},
        {"location": Location(url="https://x/" + "u" * 2049, method="GET", path="/a", param="q")},
        {"location": Location(url="https://x/a", method="GET", path="/a", param="p" * 2049)},
    ):
        f = _finding(**over)
        assert rows._fast_copy_text(f, "shop") is None, over.keys()
        _fp, _key, line = _one(f)
        assert rows.unstaged(line).decode().split("\t")[1:-3] == _reference_line(f, "shop").split("\t")
