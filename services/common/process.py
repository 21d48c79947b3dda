"""A child process that is started, waited on until ready, and always stopped: servers in tests,
Triton, SeaweedFS and the local stack's services.

Errors::

    ProcessStartError (RuntimeError)   the child did not become ready; it has been stopped
    ├── ProcessExitedError             it exited first (the message has its exit code and log tail)
    └── ProcessNotReadyError           not ready within `ready_timeout_s` (also a TimeoutError)

The child runs in a session of its own (its pid is its process group id, so a Ctrl-C at the
terminal does not reach it and `os.killpg(pid, ...)` reaches what it started), reads nothing
from stdin, and writes stdout and stderr to `log_path` (appended to, so a restart keeps the
earlier log). `stop` sends SIGTERM to the child and, after `stop_grace_s`, SIGKILL to its group.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_READY_TIMEOUT_S = 60.0
DEFAULT_STOP_GRACE_S = 15.0
READY_POLL_S = 0.25
LOG_TAIL_LINES = 30


class ProcessStartError(RuntimeError):
    """The child did not become ready, and has been stopped."""


class ProcessExitedError(ProcessStartError):
    """The child exited before it was ready."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


class ProcessNotReadyError(ProcessStartError, TimeoutError):
    """The child still ran but was not ready within its timeout."""


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held open until every one is chosen)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    return free_ports(1)[0]


def kill_group(pgid: int) -> None:
    """SIGKILL to process group `pgid`; nothing when it is gone (or not ours)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class StartedInWith:
    """`with thing:` starts it and stops it, whatever happens inside."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ManagedProcess(StartedInWith):
    """One child process; `start` returns once `ready()` is true. Use as a context manager.

    `ready` is called every READY_POLL_S seconds while the child runs; it returns False (not
    raises) while the child is not ready yet. Without it the child is ready once started.
    `env` is the child's whole environment (None: ours). `start` may be called again after
    `stop`, which is how a supervisor restarts a child with the same command and ports.
    """

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        self.command = [str(part) for part in command]
        self.log_path = log_path
        self.name = name or Path(self.command[0]).name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.ready = ready
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self._process: subprocess.Popen[bytes] | None = None
        self._returncode = 0

    @property
    def pid(self) -> int | None:
        """The child's pid (and process group id) from `start` until `stop`."""
        return self._process.pid if self._process is not None else None

    def poll(self) -> int | None:
        """None while the child runs; otherwise its exit code (0 when it was never started)."""
        return self._process.poll() if self._process is not None else self._returncode

    def start(self) -> None:
        """Start the child and wait until it is ready; on failure it is stopped, then raised."""
        if self._process is not None:
            raise ProcessStartError(f"{self.name} is already started (pid {self._process.pid}); stop it first")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:  # the child keeps its own descriptor
            self._process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.debug("started %s (pid %d)", self.name, self._process.pid)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                raise ProcessExitedError(
                    f"{self.name} exited with code {returncode} before it was ready; "
                    f"from {self.log_path}:\n{self.log_tail()}",
                    returncode,
                )
            if self.ready is None or self.ready():
                return
            if time.monotonic() > deadline:
                raise ProcessNotReadyError(
                    f"{self.name} was not ready within {self.ready_timeout_s:g} s; "
                    f"from {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(READY_POLL_S)

    def stop(self) -> None:
        """SIGTERM to the child; after `stop_grace_s`, SIGKILL to its process group. Then reaped."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %g s of SIGTERM; killing it", self.name, self.stop_grace_s)
                kill_group(process.pid)
                process.wait(self.stop_grace_s)
        self._returncode = process.returncode
        log.debug("stopped %s (pid %d, code %d)", self.name, process.pid, process.returncode)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the child's log ('' when there is none)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class OneProcessServer(StartedInWith):
    """What a server built on one `ManagedProcess` shares: its pid, `poll`, `stop` and use as a
    context manager. Subclasses set `self._process` in `start`."""

    _process: ManagedProcess | None = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def poll(self) -> int | None:
        """None while the server runs; its exit code (0 when never started) otherwise."""
        return self._process.poll() if self._process is not None else 0
