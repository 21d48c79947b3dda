"""The whole local stack on 127.0.0.1: Triton, the four services and the gateway, supervised.

`mitoscope up` starts one supervisor process (`python -m mitoscope.stack`), which starts every
process, restarts one that exits, and writes `.cache/stack/stack.json` (pids and URLs);
`mitoscope down` asks it to stop them all. Every process binds loopback on a free port; logs go
to `.cache/stack/*.log`. With `s3=True` a SeaweedFS S3 server is started first: uploads go to its
`mitoscope` bucket and every service reads and writes `s3://` locations there.

One module, past 350 lines on purpose: the supervisor (which writes `stack.json` and owns the
children) and the `Stack` handle (which reads that file and checks the pids it names) are the
two ends of one small protocol; split apart, each would import half of the other.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from mitoscope.s3server import SeaweedS3, remove_grpc_sockets
from services.common import objectstore
from services.common.objectstore import S3Config
from services.common.process import LOOPBACK, ManagedProcess, free_port, kill_group
from services.detector.triton_server import TritonServer
from services.gateway.orchestrate import ServiceUrls

SERVICE_READY_TIMEOUT_S = 60.0
SERVICE_STOP_GRACE_S = 10.0
LIVE_PROBE_TIMEOUT_S = 1.0
UP_TIMEOUT_S = 240.0  # SeaweedFS, Triton and five services, one after the other
SUPERVISOR_STOP_TIMEOUT_S = 60.0
SUPERVISE_POLL_S = 1.0
MAX_RESTARTS = 5
STATE_NAME = "stack.json"
SERVICES = ("tiler", "preprocess", "detector", "aggregator", "gateway")
S3_BUCKET = "mitoscope"

log = logging.getLogger(__name__)
WATCH_FOLDER = "inbox"  # under the slide root, or the S3 bucket with --s3


def service_process(
    name: str, env: dict[str, str], log_dir: Path, port: int | None = None
) -> tuple[ManagedProcess, str]:
    """`services.<name>.app:create_app` under uvicorn on 127.0.0.1 (not started yet; ready once
    /health/live answers), logging to `<log_dir>/<name>.log`; and its base URL."""
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"

    def live() -> bool:
        try:
            return httpx.get(f"{url}/health/live", timeout=LIVE_PROBE_TIMEOUT_S).status_code == 200
        except httpx.TransportError:
            return False

    command = [sys.executable, "-m", "uvicorn", f"services.{name}.app:create_app", "--factory"]
    command += ["--host", LOOPBACK, "--port", str(port), "--log-level", "warning"]
    process = ManagedProcess(
        command,
        log_dir / f"{name}.log",
        name=name,
        env={**os.environ, **env},
        ready=live,
        ready_timeout_s=SERVICE_READY_TIMEOUT_S,
        stop_grace_s=SERVICE_STOP_GRACE_S,
    )
    return process, url


@contextmanager
def service(name: str, env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """A service for the duration of a `with` block; yields its base URL."""
    process, url = service_process(name, env, log_dir)
    with process:
        yield url


def pipeline_services(exits: ExitStack, slide_root: Path, work_dir: Path, detector_env: dict[str, str]) -> ServiceUrls:
    """Tiler, preprocess, detector and aggregator, stopped when `exits` closes; their URLs."""
    tiler_env = {"TILER_SLIDE_ROOT": str(slide_root), "TILER_CACHE_DIR": str(work_dir / "cache")}
    return ServiceUrls(
        tiler=exits.enter_context(service("tiler", tiler_env, work_dir)),
        preprocess=exits.enter_context(service("preprocess", {}, work_dir)),
        detector=exits.enter_context(service("detector", detector_env, work_dir)),
        aggregator=exits.enter_context(service("aggregator", {}, work_dir)),
    )


class Supervised(Protocol):
    """What the supervisor needs of a child; `ManagedProcess`, `TritonServer` and `SeaweedS3` fit."""

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def poll(self) -> int | None: ...

    def stop(self) -> None: ...


@dataclass
class Child:
    """One supervised process and what became of it."""

    name: str
    process: Supervised
    restarts: int = 0
    failed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class Supervisor:
    """Runs the stack's processes in the foreground: starts them in order, restarts one that exits
    (on the same port, so URLs stay valid; up to MAX_RESTARTS times), and stops them all, in
    reverse order, on SIGTERM or SIGINT. `stack.json` in the state dir says what runs where."""

    def __init__(self, repo_root: Path, slide_root: Path, state_dir: Path, s3: bool) -> None:
        self.repo_root, self.slide_root, self.state_dir, self.s3 = repo_root, slide_root, state_dir, s3
        self.children: list[Child] = []
        self.urls: dict[str, str] = {}
        self.s3_server: SeaweedS3 | None = None
        self._stopping = False

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_NAME

    def _write_state(self, ready: bool) -> None:
        server = self.s3_server
        state = {
            "supervisor_pid": os.getpid(),
            "supervisor_start": _start_time(os.getpid()),
            "ready": ready,
            "pids": {c.name: c.pid for c in self.children},
            "starts": {c.name: _start_time(c.pid) for c in self.children},
            "restarts": {c.name: c.restarts for c in self.children},
            "failed": [c.name for c in self.children if c.failed],
            "urls": self.urls,
            "s3": None
            if server is None
            else {"endpoint": server.endpoint, "access_key": server.access_key, "secret_key": server.secret_key},
            "s3_ports": server.ports if server else {},
            "s3_socket_dir": str(server.temp_socket_dir or "") if server else "",
        }
        tmp = self.state_path.with_name(STATE_NAME + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_path)

    def _add(self, name: str, process: Supervised) -> None:
        if self._stopping:  # told to stop while starting: start nothing more
            raise _Stopping
        process.start()
        self.children.append(Child(name, process))
        self._write_state(ready=False)  # recorded at once, so `down` can stop a stack still starting

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.slide_root.mkdir(parents=True, exist_ok=True)
        env = {
            "TILER_SLIDE_ROOT": str(self.slide_root),
            "TILER_CACHE_DIR": str(self.state_dir / "cache"),
            "DETECTOR_BACKEND": "triton",
            "DETECTOR_MODEL_REPOSITORY": str(self.repo_root / "model_repository"),
            "GATEWAY_SLIDE_ROOT": str(self.slide_root),
            "GATEWAY_DATABASE_URL": f"sqlite:///{self.state_dir / 'gateway.db'}",
            # New slides dropped into <slide root>/inbox are scored; results land next to them.
            "GATEWAY_WATCH_LOCATION": WATCH_FOLDER,
            "GATEWAY_WATCH_POLL_S": "2",
            "GATEWAY_WATCH_SETTLE_S": "2",
            "AGGREGATOR_OUTPUT_ROOT": str(self.slide_root),
        }
        if self.s3:
            server = self.s3_server = SeaweedS3(self.state_dir / "s3")
            self._add("s3", server)
            config = S3Config(server.endpoint, server.access_key, server.secret_key)
            objectstore.make_bucket(S3_BUCKET, config)
            self.urls["s3"] = f"http://{server.endpoint}"
            env |= config.env() | {
                "GATEWAY_UPLOAD_LOCATION": f"s3://{S3_BUCKET}/uploads",
                "GATEWAY_RESULTS_LOCATION": f"s3://{S3_BUCKET}/results",
                "GATEWAY_WATCH_LOCATION": f"s3://{S3_BUCKET}/{WATCH_FOLDER}",
            }
        triton = TritonServer(
            self.repo_root / "model_repository",
            self.repo_root / ".venv-triton",
            self.repo_root / ".cache" / "triton",
            log_path=self.state_dir / "triton.log",
        )
        self._add("triton", triton)
        self.urls["triton_grpc"] = env["DETECTOR_TRITON_URL"] = triton.grpc_url
        for name in SERVICES:
            if name == "gateway":
                env |= {f"GATEWAY_{n.upper()}_URL": self.urls[n] for n in SERVICES if n != "gateway"}
            process, url = service_process(name, dict(env), self.state_dir)
            self._add(name, process)
            self.urls[name] = url

    def run(self) -> None:
        """Start everything, then watch over it until told to stop."""

        def stop(signum: int, frame: object) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            self._write_state(ready=False)
            self.start()
            if self._stopping:
                return
            self._write_state(ready=True)
            log.info("stack up: %s", self.urls)
            while not self._stopping:
                time.sleep(SUPERVISE_POLL_S)
                if any(self._revive(child) for child in self.children) and not self._stopping:
                    self._write_state(ready=True)
        except _Stopping:
            log.info("stopped while starting")
        finally:
            self.shutdown()

    def _revive(self, child: Child) -> bool:
        """Restart `child` if it exited; True when something changed."""
        if child.failed or self._stopping or child.process.poll() is None:
            return False
        if child.restarts >= MAX_RESTARTS:
            log.error("%s exited again after %d restarts; giving up on it", child.name, child.restarts)
            child.failed = True
            return True
        child.restarts += 1
        log.warning("%s exited; restarting it (restart %d of %d)", child.name, child.restarts, MAX_RESTARTS)
        try:
            child.process.stop()  # reap it
            child.process.start()  # same command, same port
        except Exception:
            log.exception("restarting %s failed", child.name)
        return True

    def shutdown(self) -> None:
        for child in reversed(self.children):
            try:
                child.process.stop()
            except Exception:
                log.exception("stopping %s", child.name)
        if self.s3_server is not None:
            remove_grpc_sockets(self.s3_server.ports)
        try:  # only our own: a newer stack may have been started since `down` gave up waiting for us
            if json.loads(self.state_path.read_text())["supervisor_pid"] == os.getpid():
                self.state_path.unlink()
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass


class _Stopping(Exception):
    """SIGTERM arrived while the stack was starting."""


@dataclass
class Stack:
    """The caller's handle on the local stack: `up` starts a supervisor process and waits until
    everything answers; `down` asks the supervisor to stop it all (and cleans up after one that
    was killed)."""

    repo_root: Path
    slide_root: Path
    state_dir: Path
    s3: bool = False

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_NAME

    def state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return state

    @property
    def s3_config(self) -> S3Config | None:
        state = self.state()
        if state is None or state.get("s3") is None:
            return None
        s3 = state["s3"]
        return S3Config(s3["endpoint"], s3["access_key"], s3["secret_key"])

    def up(self, timeout_s: float = UP_TIMEOUT_S) -> dict[str, str]:
        if (state := self.state()) is not None:
            if _alive(state["supervisor_pid"], state.get("supervisor_start")):
                raise StackError(
                    f"the stack is already up (supervisor pid {state['supervisor_pid']}); `mitoscope down` stops it"
                )
            self.down()  # what a supervisor that died left running
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "mitoscope.stack",
            "--repo-root",
            str(self.repo_root),
            "--slides",
            str(self.slide_root),
            "--state-dir",
            str(self.state_dir),
            *(["--s3"] if self.s3 else []),
        ]
        log_path = self.state_dir / "supervisor.log"
        with log_path.open("ab") as log_file:
            supervisor = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            deadline = time.monotonic() + timeout_s
            while (state := self.state()) is None or not state["ready"]:
                if supervisor.poll() is not None:
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                    raise StackError(f"the stack did not start; from {log_path}:\n{tail}")
                if time.monotonic() > deadline:
                    raise StackError(f"the stack was not up within {timeout_s:.0f} s; see {log_path}")
                time.sleep(0.2)
        except BaseException:  # timed out, failed, or interrupted: stop what was started
            self.down()
            if supervisor.poll() is None:
                kill_group(supervisor.pid)
            supervisor.wait()
            raise
        urls: dict[str, str] = state["urls"]
        return urls

    def down(self) -> list[str]:
        """Stop the stack; the names of the processes that were running."""
        state = self.state()
        if state is None:
            return []
        starts = state.get("starts", {})
        running = [name for name, pid in state["pids"].items() if _alive(pid, starts.get(name))]
        supervisor = state["supervisor_pid"]
        if _alive(supervisor, state.get("supervisor_start")):
            os.kill(supervisor, signal.SIGTERM)
            deadline = time.monotonic() + SUPERVISOR_STOP_TIMEOUT_S
            while _alive(supervisor) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(supervisor):  # it did not finish in time
                kill_group(supervisor)
        for name, pid in state["pids"].items():  # a supervisor that was killed leaves its children behind
            if _alive(pid, starts.get(name)):
                kill_group(pid)
        remove_grpc_sockets(state.get("s3_ports", {}))
        if state.get("s3_socket_dir"):
            shutil.rmtree(state["s3_socket_dir"], ignore_errors=True)
        self.state_path.unlink(missing_ok=True)
        return running


class StackError(RuntimeError):
    """The local stack cannot be started or is already running."""


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split() if pid > 0 else None
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, /proc/<pid>/stat field 22): with the pid, it
    names one process, so a pid reused after a reboot or a crash is never signalled."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def _alive(pid: int, start: str | None = None) -> bool:
    """`pid` runs (not a zombie) and, when `start` is given, is the process that started then."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z" and (start is None or fields[19] == start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mitoscope.stack", description=Supervisor.__doc__)
    parser.add_argument("--repo-root", type=Path, required=True)
    parser.add_argument("--slides", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s supervisor: %(message)s")
    Supervisor(args.repo_root, args.slides, args.state_dir, args.s3).run()


if __name__ == "__main__":
    main()
