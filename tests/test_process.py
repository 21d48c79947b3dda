"""`ManagedProcess` with real child processes: readiness, early exits, timeouts and stopping.

Every test stops what it starts and checks that no process is left behind.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.common.process import (
    ManagedProcess,
    ProcessExitedError,
    ProcessNotReadyError,
    ProcessStartError,
    free_port,
)

GONE_TIMEOUT_S = 5.0


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _running(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _assert_gone(pid: int) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while _running(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)


def _http_server(port: int, log_path: Path) -> ManagedProcess:
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return ManagedProcess(command, log_path, name="http.server", ready=answers, ready_timeout_s=30)


def test_start_returns_once_the_server_answers_and_stop_leaves_nothing(tmp_path: Path) -> None:
    port = free_port()
    with _http_server(port, tmp_path / "http.log") as server:
        pid = server.pid
        assert pid is not None and server.poll() is None
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        assert os.getpgid(pid) == pid  # its own process group
    assert server.pid is None and server.poll() is not None
    _assert_gone(pid)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_start_waits_until_the_probe_passes(tmp_path: Path) -> None:
    flag = tmp_path / "ready.flag"
    probes: list[bool] = []

    def ready() -> bool:
        probes.append(flag.exists())
        return probes[-1]

    code = f"import pathlib, time; time.sleep(1.0); pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"
    child = ManagedProcess(_python(code), tmp_path / "slow.log", ready=ready, ready_timeout_s=30)
    started = time.monotonic()
    with child:
        assert time.monotonic() - started >= 1.0
        assert flag.exists() and probes[-1] and not probes[0]
        pid = child.pid
        assert pid is not None
    _assert_gone(pid)


def test_a_child_that_exits_before_ready_fails_with_its_code_and_log_tail(tmp_path: Path) -> None:
    code = (
        "import sys; print('\\n'.join(f'line {i}' for i in range(100))); print('port taken', flush=True); sys.exit(3)"
    )
    child = ManagedProcess(_python(code), tmp_path / "dies.log", name="dier", ready=lambda: False)
    with pytest.raises(ProcessExitedError) as raised:
        child.start()
    message = str(raised.value)
    assert raised.value.returncode == 3 and "dier exited with code 3" in message
    assert "port taken" in message and "line 99" in message  # the end of the log...
    assert "line 10\n" not in message  # ...and only the end
    assert str(tmp_path / "dies.log") in message
    assert child.pid is None and child.poll() == 3


def test_a_child_not_ready_in_time_is_stopped(tmp_path: Path) -> None:
    pids: list[int] = []

    def never_ready() -> bool:
        assert child.pid is not None
        pids.append(child.pid)
        return False

    child = ManagedProcess(
        _python("import time; time.sleep(60)"), tmp_path / "never.log", ready=never_ready, ready_timeout_s=0.5
    )
    started = time.monotonic()
    with pytest.raises(ProcessNotReadyError, match=r"not ready within 0.5 s") as raised:
        child.start()
    assert 0.5 <= time.monotonic() - started < 10
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, ProcessStartError)
    assert child.pid is None and len(pids) > 1
    _assert_gone(pids[0])


def test_stop_kills_a_child_that_ignores_sigterm_and_its_group_after_the_grace(tmp_path: Path) -> None:
    log_path = tmp_path / "stubborn.log"
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('grandchild', grandchild.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = ManagedProcess(
        _python(code), log_path, ready=lambda: "grandchild" in log_path.read_text(), stop_grace_s=0.5
    )
    child.start()
    pid = child.pid
    assert pid is not None
    grandchild = int(log_path.read_text().split()[1])
    assert _running(grandchild)
    started = time.monotonic()
    child.stop()
    assert 0.5 <= time.monotonic() - started < 5
    assert child.poll() == -9  # SIGKILL, after SIGTERM was ignored
    _assert_gone(pid)
    _assert_gone(grandchild)  # killed with the group


def test_a_child_that_honours_sigterm_stops_without_waiting_out_the_grace(tmp_path: Path) -> None:
    child = ManagedProcess(_python("import time; time.sleep(60)"), tmp_path / "polite.log", stop_grace_s=30)
    child.start()
    started = time.monotonic()
    child.stop()
    assert time.monotonic() - started < 5
    assert child.poll() == -15
    child.stop()  # a second stop does nothing


def test_env_cwd_and_log_are_the_childs_and_a_restart_appends(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "child.log"
    code = (
        "import os, time\n"
        "print(os.getcwd(), os.environ['MARK'], os.environ.get('HOME', 'no-home'), flush=True)\n"
        "time.sleep(60)\n"
    )

    def printed() -> bool:
        return log_path.read_text().count("\n") == len(marks)

    marks = ["first"]
    child = ManagedProcess(_python(code), log_path, env={"MARK": "first"}, cwd=tmp_path, ready=printed)
    child.start()
    with pytest.raises(ProcessStartError, match="already started"):
        child.start()
    child.stop()
    marks.append("second")
    child.env = {"MARK": "second"}
    child.start()
    child.stop()
    assert log_path.read_text().splitlines() == [f"{tmp_path} {mark} no-home" for mark in marks]


def test_a_restart_serves_on_the_same_port(tmp_path: Path) -> None:
    port = free_port()
    server = _http_server(port, tmp_path / "http.log")
    server.start()
    try:
        first = server.pid
        server.stop()
        server.start()
        assert server.pid != first
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    finally:
        server.stop()
    assert first is not None
    _assert_gone(first)
