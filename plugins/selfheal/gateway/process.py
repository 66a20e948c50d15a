"""Start and stop one HAProxy process we own (tests, benchmarks, the local stack).

HAProxy runs in the foreground (``-db``) as our child, so its PID is the one
we started and stopping it never touches any other HAProxy on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time

from selfheal.gateway.config import HAPROXY_BIN, GatewayPaths


class HAProxyStartError(RuntimeError):
    """HAProxy exited or its runtime socket never answered; carries its output."""


class HAProxyProcess:
    def __init__(self, paths: GatewayPaths, haproxy: str = HAPROXY_BIN) -> None:
        exe = shutil.which(haproxy)
        if exe is None:
            raise HAProxyStartError(f"{haproxy}: HAProxy binary not found (set SELFHEAL_HAPROXY)")
        self.exe = exe
        self.paths = paths
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = paths.run_dir / "haproxy.out"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> HAProxyProcess:
        """Start and wait until the runtime socket accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            raise HAProxyStartError(f"already running as PID {self.proc.pid}")
        out = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child, closed on stop
        self.proc = subprocess.Popen(
            [self.exe, "-db", "-f", str(self.paths.config)], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        sock = str(self.paths.admin_socket)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HAProxyStartError(f"haproxy exited with {self.proc.returncode}: {self.output()[-2000:]}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(sock)
                s.sendall(b"show version\n")
                if s.recv(100):
                    return self
            time.sleep(0.01)
        self.stop()
        raise HAProxyStartError(f"haproxy runtime socket {sock} did not answer within {timeout}s")

    def output(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the crash case (runtime state is lost, the socket file stays behind)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (immediate stop), SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> HAProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

