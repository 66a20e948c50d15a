"""Sandbox errors: each names the stage it happened in and a one-line reason.

``docker_errors`` turns docker-py / requests exceptions into these, so a daemon
that went away reads "docker daemon unavailable" and not a urllib3 traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class SandboxError(RuntimeError):
    """A verification stage could not complete; ``stage`` says which, ``reason`` why (one line)."""

    def __init__(self, stage: str, reason: str, *, log: str = "") -> None:
        self.stage = stage
        self.reason = " ".join(reason.split())
        self.log = log
        super().__init__(f"{stage}: {self.reason}")


class BuildFailed(SandboxError):
    """The image could not be built (checkout, dependencies or ``docker build``)."""


class DockerUnavailable(SandboxError):
    """The Docker daemon did not answer (stopped, socket gone, connection reset)."""


class CheckTimeout(SandboxError):
    """A check ran past its own timeout or the sandbox's hard timeout."""


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


@contextmanager
def docker_errors(stage: str) -> Iterator[None]:
    """Re-raise docker-py and transport errors of ``stage`` as SandboxError subclasses."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except SandboxError:
        raise
    except (requests.exceptions.ConnectionError, ConnectionError) as e:
        raise DockerUnavailable(stage, f"docker daemon unavailable: {_short(e)}") from e
    except requests.exceptions.Timeout as e:
        raise DockerUnavailable(stage, f"docker daemon did not answer in time: {_short(e)}") from e
    except docker.errors.BuildError as e:
        raise BuildFailed(stage, _short(e)) from e
    except docker.errors.APIError as e:
        raise SandboxError(stage, f"docker API error: {_short(e.explanation or e)}") from e
    except docker.errors.DockerException as e:
        # docker-py raises a bare DockerException when it cannot even reach the API version endpoint.
        raise DockerUnavailable(stage, f"docker daemon unavailable: {_short(e)}") from e
