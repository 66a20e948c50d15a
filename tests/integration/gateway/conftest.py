"""Fixtures: a real HAProxy 2.6 per test in front of small real HTTP backends (see gateway_kit)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from gateway_kit import EchoBackend, GatewayEnv, start_gateway, stop_gateway

from selfheal.gateway.state import InMemoryStateStore


@pytest.fixture
def echo_backend() -> Iterator[Callable[..., EchoBackend]]:
    made: list[EchoBackend] = []

    def make(name: str, **kw: object) -> EchoBackend:
        b = EchoBackend(name, **kw)  # type: ignore[arg-type]
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def gateway() -> Iterator[GatewayEnv]:
    env = start_gateway(InMemoryStateStore())
    try:
        yield env
    finally:
        stop_gateway(env)
