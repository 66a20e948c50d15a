"""Shared fixtures for the findings tests: the scanner samples."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "scanner-samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def sample() -> Callable[[str], bytes]:
    """``sample("zap/some_2.9.0.xml")`` -> the file's bytes."""

    def load(rel: str) -> bytes:
        return (SAMPLES / rel).read_bytes()

    return load
