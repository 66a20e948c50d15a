"""The parser interface and the safe decoding every parser goes through.

A parser module defines one ``ReportFormat``: a name, the scanner it belongs
to, its syntax (JSON or XML), a cheap ``detect`` predicate used by
``--format auto``, and ``parse(report) -> Iterator[Finding]``. Parsers never
touch bytes directly: ``Report`` decodes JSON with msgspec (typed structs, so
a wrong type is a clear error naming the path) and XML with defusedxml's
streaming iterparse (DTDs, entity declarations and external references are
refused, never expanded or fetched). Every decoding problem becomes a
``ParseError`` naming the input.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, Literal, TypeVar
from xml.etree.ElementTree import Element
from xml.etree.ElementTree import ParseError as XmlSyntaxError

import msgspec
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse as _defused_iterparse

from selfheal.findings.limits import MAX_FINDINGS, SHORT_MAX_CHARS, clip
from selfheal.findings.model import Finding, Location, Package, ParseError

T = TypeVar("T")
Syntax = Literal["json", "xml"]

_BOM = b"\xef\xbb\xbf"
_CVE_RE = re.compile(r"CVE-\d{4}-\d{4,}", re.IGNORECASE)
_CWE_RE = re.compile(r"CWE-(\d{1,6})\b", re.IGNORECASE)
_FIRST_KEY_RE = re.compile(rb'\s*\{\s*"([A-Za-z0-9_@$.-]{1,64})"\s*:')
# split_url for ASCII: [scheme://authority] then the path up to the query or fragment
_URL_RE = re.compile(r"([A-Za-z0-9]+://[^/?#]*)?([^?#]*)")
_ROOT_TAG_RE = re.compile(rb"<(?![?!])[A-Za-z_][\w.:-]*")


@dataclass(frozen=True, slots=True)
class XmlHead:
    """What ``detect`` sees of an XML document: the root and its first child."""

    root: str
    attrib: dict[str, str]
    first_child: str | None


@dataclass(frozen=True, slots=True)
class ReportFormat:
    """One input format (``--format`` name) and how to recognise and parse it."""

    name: str
    scanner: str
    syntax: Syntax
    summary: str
    # JSON: called with the set of top-level keys; XML: with an XmlHead.
    detect: Callable[[Any], bool]
    parse: Callable[[Report], Iterator[Finding]]
    # JSON: top-level keys that identify the format when they come first.
    first_keys: frozenset[str] = frozenset()


class Empty(msgspec.Struct, gc=False):
    """Decodes any JSON object into a 16-byte placeholder: used to count items."""


@cache
def _decoder(typ: Any) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(typ)


def _oneline(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(slots=True)
class Report:
    """One input document (bytes + the name to use in errors), decoded lazily."""

    source: str
    data: bytes
    max_findings: int = MAX_FINDINGS
    _top: dict[str, msgspec.Raw] | None = field(default=None, repr=False)
    _braces: int = -1

    def error(self, problem: str) -> ParseError:
        return ParseError(self.source, _oneline(problem))

    # -- JSON -------------------------------------------------------------
    @property
    def json_data(self) -> bytes:
        return self.data[3:] if self.data.startswith(_BOM) else self.data

    def first_key(self) -> str | None:
        """The first member name of the top-level JSON object, read from the raw
        bytes without decoding the document: scanners write their defining key
        first (``{"alerts": ...``, ``{"findings": ...``), so detection usually
        costs nothing."""
        m = _FIRST_KEY_RE.match(self.json_data)
        return m.group(1).decode("ascii") if m else None

    def json_top(self) -> dict[str, msgspec.Raw]:
        """The top-level JSON object, its members left undecoded (``msgspec.Raw``):
        the detection fallback when the first key is not decisive."""
        if self._top is None:
            try:
                self._top = _decoder(dict[str, msgspec.Raw]).decode(self.json_data)
            except msgspec.ValidationError as exc:
                got = str(exc).rpartition("got ")[2].strip("`") or "something else"
                raise self.error(f"expected a JSON object at the top level, got {got}") from None
            except msgspec.DecodeError as exc:
                raise self.error(f"invalid JSON: {exc}") from None
            except RecursionError:
                raise self.error("invalid JSON: nested too deeply") from None
        return self._top

    def decode(self, raw: msgspec.Raw | bytes, typ: type[T] | Any, where: str = "") -> T:
        """Typed decode of JSON (a fragment, or the document when ``where`` is '');
        a type mismatch names the JSON path."""
        try:
            return _decoder(typ).decode(raw)
        except msgspec.ValidationError as exc:
            msg, _, at = str(exc).partition(" - at `$")
            path = (where + at.rstrip("`")).lstrip(".")
            if not path:
                got = msg.rpartition("got ")[2].strip("`") or "something else"
                raise self.error(f"expected a JSON object at the top level, got {got}") from None
            raise self.error(f"{path}: {msg}") from None
        except msgspec.DecodeError as exc:
            raise self.error(f"invalid JSON{' in ' + where if where else ''}: {exc}") from None
        except RecursionError:
            raise self.error("invalid JSON: nested too deeply") from None

    def decode_doc(self, typ: type[T]) -> T:
        """The whole document decoded in one pass into the parser's top-level struct."""
        return self.decode(self.json_data, typ)

    def check_json_items(self, count_type: Any, counter: Callable[[Any], int]) -> None:
        """Refuse more than ``max_findings`` items before materializing them.

        Every item is a JSON object, so the number of ``{`` in the input bounds
        the item count (a C-speed scan). Only when that bound is over the limit
        is the document decoded as ``count_type`` (items as empty 16-byte
        structs, unknown members skipped) and ``counter`` applied to count the
        items exactly.
        """
        if len(self.data) <= self.max_findings:
            return  # fewer bytes than the limit: fewer "{" too, no need to count them
        if self._braces < 0:
            self._braces = self.data.count(b"{")
        if self._braces <= self.max_findings:
            return
        self.check_count(counter(self.decode_doc(count_type)))

    def check_count(self, n: int) -> None:
        if n > self.max_findings:
            raise self.error(
                f"report has {n} findings, over the limit of {self.max_findings} per report "
                "(page the scanner's API or split the scan)"
            )

    # -- XML --------------------------------------------------------------
    def check_xml_items(self, tag: str) -> None:
        """Refuse more than ``max_findings`` ``<tag>`` elements, counted in the raw
        bytes before parsing (an upper bound: it also counts tags in comments)."""
        data = self.data
        prefix = b"<" + tag.encode()
        n = 0
        for end in (b">", b" ", b"/", b"\n", b"\t", b"\r"):
            n += data.count(prefix + end)
            if n > self.max_findings:
                break
        self.check_count(n)

    def _xml_data(self) -> bytes:
        """The XML to parse. Wapiti writes ``xsi:nil="true"`` without declaring the
        ``xsi`` prefix (minidom's setAttributeNS); a namespace-aware parser rejects
        that, so the standard declaration is added to the root element."""
        data = self.data
        if b"xsi:" in data and b"xmlns:xsi" not in data:
            m = _ROOT_TAG_RE.search(data)
            if m:
                data = data[: m.end()] + b' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"' + data[m.end() :]
        return data

    def xml_events(self, events: tuple[str, ...] = ("start", "end")) -> Iterator[tuple[str, Element]]:
        """Stream ``(event, element)`` pairs; DTDs, entities and external references
        are refused. Syntax errors (truncation, bad UTF-8) become ParseError."""
        stripped = self.data.lstrip()
        if not stripped.startswith(b"<") and not stripped.startswith(_BOM + b"<"):
            raise self.error("not an XML document")
        try:
            yield from _defused_iterparse(
                io.BytesIO(self._xml_data()), events=events, forbid_dtd=True, forbid_entities=True,
                forbid_external=True,
            )
        except DefusedXmlException as exc:
            raise self.error(f"refused unsafe XML ({type(exc).__name__}): DTDs and entities are not allowed") \
                from None
        except XmlSyntaxError as exc:
            raise self.error(f"invalid XML: {exc}") from None
        except (ValueError, LookupError, UnicodeError) as exc:  # e.g. an unknown declared encoding
            raise self.error(f"invalid XML: {exc}") from None

    def xml_head(self) -> XmlHead:
        root: Element | None = None
        for _event, elem in self.xml_events(("start",)):
            if root is None:
                root = elem
                continue
            return XmlHead(_local(root.tag), dict(root.attrib), _local(elem.tag))
        if root is None:
            raise self.error("empty XML document")
        return XmlHead(_local(root.tag), dict(root.attrib), None)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


# -- Location / Package for the hot paths --------------------------------------
# A frozen dataclass's generated __init__ sets each field through
# object.__setattr__ (it must get past the class's own __setattr__, which
# raises): ~11,600 CPU instructions for a Location, more than the rest of a ZAP
# instance's normalization. Setting the slots through their member descriptors
# does the same in ~7,000 and builds the same object (equal, same hash); a test
# holds these to the real constructors.
_new = object.__new__
_LOC_URL, _LOC_METHOD, _LOC_PATH, _LOC_PARAM, _LOC_HOST, _LOC_PORT, _LOC_LINE = (
    Location.__dict__[f.name].__set__ for f in fields(Location)
)
_PKG_NAME, _PKG_VERSION, _PKG_FIXED, _PKG_ECOSYSTEM, _PKG_FILE = (
    Package.__dict__[f.name].__set__ for f in fields(Package)
)


def new_location(
    url: str | None = None,
    method: str | None = None,
    path: str | None = None,
    param: str | None = None,
    host: str | None = None,
    port: str | None = None,
    line: int | None = None,
) -> Location:
    """``Location(url, method, path, param, host, port, line)``, cheaper (see above)."""
    loc = _new(Location)
    _LOC_URL(loc, url)
    _LOC_METHOD(loc, method)
    _LOC_PATH(loc, path)
    _LOC_PARAM(loc, param)
    _LOC_HOST(loc, host)
    _LOC_PORT(loc, port)
    _LOC_LINE(loc, line)
    return loc


def new_package(
    name: str,
    version: str | None = None,
    fixed_version: str | None = None,
    ecosystem: str | None = None,
    file_path: str | None = None,
) -> Package:
    """``Package(name, version, fixed_version, ecosystem, file_path)``, cheaper (see above)."""
    pkg = _new(Package)
    _PKG_NAME(pkg, name)
    _PKG_VERSION(pkg, version)
    _PKG_FIXED(pkg, fixed_version)
    _PKG_ECOSYSTEM(pkg, ecosystem)
    _PKG_FILE(pkg, file_path)
    return pkg


# -- small coercions shared by the parsers (hot paths: keep them cheap) ------

def text(value: Any) -> str:
    """A JSON scalar as text ('' for null)."""
    if value.__class__ is str:
        return value
    if value is None:
        return ""
    return str(value)


def to_int(value: Any) -> int | None:
    """An integer from an int or a numeric string; anything else -> None."""
    if value.__class__ is int:
        return value
    if value.__class__ is str:
        value = value.strip()
        if value.lstrip("-").isdigit() and len(value) < 19:
            return int(value)
        return None
    if isinstance(value, float) and value == value and abs(value) < 1e18:
        return int(value)
    return None


def to_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        f = float(value)
    else:
        try:
            f = float(str(value).strip())
        except ValueError:
            return None
    if f != f or f in (float("inf"), float("-inf")):
        return None
    return f


def cwe_id(value: Any) -> int | None:
    """A CWE number from 89, "89", "CWE-89"; ZAP's -1/0 ("no CWE") -> None."""
    n = to_int(value)
    if n is None and value.__class__ is str:
        m = _CWE_RE.search(value)
        n = int(m.group(1)) if m else None
    return n if n is not None and 0 < n < 1_000_000 else None


def cves_in(*values: str) -> tuple[str, ...]:
    """Distinct CVE ids (upper-case) found in the given strings, in order."""
    found: dict[str, None] = {}
    for v in values:
        if v and "CVE-" in v.upper():
            for m in _CVE_RE.findall(v):
                found[m.upper()] = None
    return tuple(found)


def first_cwe(*values: str) -> int | None:
    for v in values:
        if v:
            m = _CWE_RE.search(v)
            if m:
                return int(m.group(1))
    return None


def short(value: Any) -> str:
    return clip(text(value), SHORT_MAX_CHARS)


def elem_text(parent: Element, tag: str) -> str:
    child = parent.find(tag)
    return (child.text or "") if child is not None else ""


def split_url(url: str) -> tuple[str, str]:
    """``(origin, path)`` of a URL or bare path: ``("https://h:8443", "/a/b")``;
    no query or fragment; the path of a bare origin is "/". str.find rather than
    urlsplit (~5x slower, and it validates ports we ignore) on this hot path;
    for ASCII URLs (the usual case) one regular expression match does the same."""
    if url.isascii():
        m = _URL_RE.match(url)
        return m.group(1) or "", m.group(2) or "/"  # type: ignore[union-attr]  # always matches
    start = url.find("://")
    if start > 0 and url[:start].isalnum():  # a scheme, not "://" inside a query string
        end = len(url)
        for sep in ("/", "?", "#"):
            cut = url.find(sep, start + 3, end)
            if cut >= 0:
                end = cut
        origin, rest = url[:end], url[end:]
    else:
        origin, rest = "", url
    for sep in ("?", "#"):
        cut = rest.find(sep)
        if cut >= 0:
            rest = rest[:cut]
    return origin, rest or "/"


def url_path(url: str) -> str:
    return split_url(url)[1]


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, or '' for a bare path."""
    return split_url(url)[0]
