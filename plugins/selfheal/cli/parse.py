"""`selfheal parse`: scanner reports in, one JSON object per normalized finding out.

Each line on stdout is ``Finding.to_dict()`` (fingerprint, scanner, rule_id,
title, severity, confidence, cwe, cves, cvss_score, cvss_vector, kind,
location, package, evidence, solution, ...). A file that cannot be parsed
gets one line on stderr (``error: FILE: problem``), produces no output at
all (parsing is all-or-nothing per file), and makes the exit code 1 once the
other files have been processed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, BinaryIO

import msgspec
import typer

from selfheal.findings.limits import MAX_REPORT_BYTES
from selfheal.findings.model import ParseError
from selfheal.findings.parsers import ALIASES, FORMATS, parse_bytes

_ENCODER = msgspec.json.Encoder()


def _valid_format(value: str) -> str:
    scanners = {f.scanner for f in FORMATS.values()}
    if value == "auto" or value in FORMATS or value in ALIASES or value in scanners:
        return value
    raise typer.BadParameter(f"{value!r} is not a known format; use auto, {', '.join(FORMATS)} or a scanner name")


def _read(path: str) -> bytes:
    """The report's bytes; refuses special and oversized files before reading them."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_REPORT_BYTES + 1)
    else:
        p = Path(path)
        st = p.stat()  # OSError (missing, permission) is reported by the caller
        if not p.is_file():
            raise ParseError(path, "not a regular file")
        if st.st_size > MAX_REPORT_BYTES:
            raise ParseError(path, f"report is {st.st_size} bytes, over the limit of {MAX_REPORT_BYTES} bytes")
        with p.open("rb") as fh:
            data = fh.read(MAX_REPORT_BYTES + 1)
    if len(data) > MAX_REPORT_BYTES:
        raise ParseError(path, f"report is over the limit of {MAX_REPORT_BYTES} bytes")
    return data


def _stdout() -> BinaryIO | None:
    return getattr(sys.stdout, "buffer", None)


def parse(
    files: Annotated[
        list[str], typer.Argument(metavar="FILE", help="Report files to parse ('-' reads stdin).")
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            callback=_valid_format,
            help=f"Input format: auto (detect), {', '.join(FORMATS)}, or a scanner name (zap, wapiti, ...).",
        ),
    ] = "auto",
    service: Annotated[
        str | None, typer.Option("--service", "-s", help="Service the reports belong to (part of every fingerprint).")
    ] = None,
) -> None:
    """Print one JSON object per normalized finding per line."""
    failed = 0
    out = _stdout()
    for path in files:
        try:
            findings = parse_bytes(_read(path), path, fmt, service)
        except ParseError as exc:
            failed += 1
            typer.echo(f"error: {exc}", err=True)
            continue
        except OSError as exc:
            failed += 1
            typer.echo(f"error: {path}: cannot read: {exc.strerror or exc}", err=True)
            continue
        lines = b"".join(_ENCODER.encode(f.to_dict()) + b"\n" for f in findings)
        if out is not None:
            out.write(lines)
            out.flush()
        else:  # a text-only stream (some test harnesses)
            sys.stdout.write(lines.decode("utf-8"))
    if failed:
        raise typer.Exit(1)
