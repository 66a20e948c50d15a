"""The pieces of model.py the parsers rely on."""

from __future__ import annotations

import dataclasses
import gc

import pytest

from selfheal.findings import dedupe, parse_bytes
from selfheal.findings.model import Finding, Location, Package, ParseError


def test_field_order_the_hot_paths_construct_positionally():
    """_zap.instance, _wapiti.build, sarif and inspector2 build Finding/Location/Package positionally for
    speed; this pins the order they assume."""
    assert [f.name for f in dataclasses.fields(Finding)] == [
        "scanner", "rule_id", "title", "severity", "kind", "confidence", "cwe", "cves", "cvss_score",
        "cvss_vector", "location", "package", "evidence", "solution", "description", "references", "service",
        "epss", "kev", "exploit_available", "fix_available", "scanner_status", "fingerprint", "extra",
    ]
    assert [f.name for f in dataclasses.fields(Location)][:4] == ["url", "method", "path", "param"]
    assert [f.name for f in dataclasses.fields(Package)] == ["name", "version", "fixed_version", "ecosystem",
                                                              "file_path"]


def test_to_dict_equals_asdict(sample):
    """to_dict is hand-built for speed; it must stay what dataclasses.asdict gives."""
    batch = []
    for path in ("zap/dvwa_baseline_dojo.xml", "handmade/inspector2_mixed.json", "sarif/dependency_check.sarif",
                 "handmade/gmp_get_reports_response.xml", "handmade/wapiti_report.json"):
        batch += parse_bytes(sample(path), path, service="s")
    merged = dedupe(batch)  # nested lists/dicts in extra["sources"]
    for f in batch + merged:
        expected = dataclasses.asdict(f)
        expected["cves"] = list(f.cves)
        expected["references"] = list(f.references)
        got = f.to_dict()
        assert got == expected
        assert got["extra"] is not f.extra  # a copy, as asdict makes


def test_parse_bytes_restores_the_garbage_collector(sample):
    assert gc.isenabled()
    parse_bytes(sample("zap/some_2.9.0.xml"), "ok")
    assert gc.isenabled()
    with pytest.raises(ParseError):
        parse_bytes(b"{", "bad")
    assert gc.isenabled()
    gc.disable()
    try:
        parse_bytes(sample("zap/some_2.9.0.xml"), "ok")
        assert not gc.isenabled()  # the caller's choice is kept
    finally:
        gc.enable()


def test_the_hot_path_constructors_build_the_same_objects():
    """parsers._base.new_location / new_package set the frozen dataclasses' slots
    directly; they must give exactly what the constructors give."""
    from selfheal.findings.parsers._base import new_location, new_package

    loc_args = ("https://h/a/1?q=1", "GET", "/a/1", "q", "h", "443/tcp", 7)
    for n in range(len(loc_args) + 1):
        made, real = new_location(*loc_args[:n]), Location(*loc_args[:n])
        assert made == real and hash(made) == hash(real) and repr(made) == repr(real)
    pkg_args = ("django", "3.2", "3.2.9", "pypi", "requirements.txt")
    for n in range(1, len(pkg_args) + 1):
        made, real = new_package(*pkg_args[:n]), Package(*pkg_args[:n])
        assert made == real and hash(made) == hash(real) and repr(made) == repr(real)
    with pytest.raises(dataclasses.FrozenInstanceError):
        new_location().url = "x"  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(Location)] == ["url", "method", "path", "param", "host", "port", "line"]
