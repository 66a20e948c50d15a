"""Fixtures for the Docker rollout tests: real HAProxy, real Docker containers, real traffic on loopback.

Imported by the test modules (not a conftest.py: this directory is shared with the
Kubernetes backend's tests, which need none of this).

Each test gets its own LocalStack (gateway, log collector, private internal
Docker network); everything it started is removed by its run label/PID.
The knob service images are built once per session from the offline base image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from selfheal.rollout.harness import LocalStack, knob_image


@pytest.fixture(scope="session")
def knob(docker_client, base_image: str) -> Callable[..., str]:
    """knob(version="v1", delay_ms=20, error_rate=0.2, ...) -> image tag (built once, cached by Docker)."""

    def make(**env: str | float | int) -> str:
        return knob_image(docker_client, base_image, **env)

    return make


@pytest.fixture
def stack(docker_client) -> Iterator[LocalStack]:
    st = LocalStack.start(docker_client)
    try:
        yield st
    finally:
        st.close()
