"""A private, throwaway ``redis-server`` for tests: free local port, no persistence, stopped afterwards.

Use the fixture by importing it into a test module (``from tests.redis_server import redis_server``) or use
:class:`RedisServer` directly (benchmarks do). It can be killed with SIGKILL, restarted on the same port,
and frozen/thawed with SIGSTOP/SIGCONT to simulate a crash, a restart and a hung server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 with ``--save "" --appendonly no``."""

    def __init__(self, port: int | None = None, workdir: str | Path | None = None, binary: str | None = None):
        self.binary = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(self.binary):
            raise FileNotFoundError("redis-server not found: install it (`make redis-server`) to run these tests")
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="adaptive-spec-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("already running")
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.stopped = False
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:] if (self.workdir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            if self.ping():
                return
            time.sleep(0.01)
        raise TimeoutError(f"redis-server did not answer on port {self.port} within {START_TIMEOUT_S} s")

    def ping(self, timeout: float = 0.2) -> bool:
        """A raw RESP PING (no client library), True on +PONG."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def client(self, **kwargs):  # noqa: ANN201 - a redis.Redis
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def kill(self) -> None:
        """SIGKILL: like a crash. Everything in memory is gone (no persistence)."""
        if self.process is not None and self.process.poll() is None:
            if self.stopped:
                self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)
        self.stopped = False

    def restart(self) -> RedisServer:
        """Start again on the same port (after :meth:`kill` or :meth:`stop`)."""
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (connections hang)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.stopped = False

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if self.stopped:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh private redis-server per test; stopped (and its files removed) afterwards."""
    try:
        server = RedisServer(workdir=tmp_path / "redis")
    except FileNotFoundError as error:
        pytest.fail(str(error))
    server.workdir.mkdir(parents=True, exist_ok=True)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
