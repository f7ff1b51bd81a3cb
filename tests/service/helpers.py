"""Service test helpers: real uvicorn and celery worker processes, API keys, small captures.

Every child process runs in its own process group and is killed (the whole group) when its test ends.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]  # child processes get it as PYTHONPATH

FAKE = "tests.service.fake_pipeline:PIPELINE"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def redis_available(port: int = REDIS_PORT) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=REDIS_HOST, port=port, socket_connect_timeout=1).ping())
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(seed: int = 0, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def zip_of_images(n: int = 3, names: list[str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, name in enumerate(names or [f"images/r_{i:03d}.png" for i in range(n)]):
            zf.writestr(name, png_bytes(i))
    return buf.getvalue()


def make_key(data_dir: Path, name: str, database_url: str = "") -> str:
    from service.db import Database
    from service.keys import create_key
    from service.settings import Settings

    db = Database(Settings(data_dir=data_dir, database_url=database_url).db_url)
    try:
        db.create_all()
        return create_key(db, name)[1]
    finally:
        db.dispose()


class Proc:
    """A child process in its own group, with its output in a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(cmd, env=env, stdout=self._out, stderr=subprocess.STDOUT, cwd=REPO,
                                  start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def kill9(self) -> None:
        """SIGKILL the whole group (the worker and its pool children): a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill9()
        else:  # the leader is gone; make sure no child of its group lingers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGKILL)
        self._out.close()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


class Stack:
    """An api (uvicorn) and worker processes sharing a data dir, a database and a broker."""

    def __init__(self, tmp: Path, broker_url: str, **settings: object) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                    "NERFSERVE_DATA_DIR": str(self.data), "NERFSERVE_BROKER_URL": broker_url,
                    "NERFSERVE_PIPELINE": FAKE, "NERFSERVE_HEARTBEAT_S": "1", "NERFSERVE_LEASE_TIMEOUT_S": "6",
                    "NERFSERVE_RECONCILE_INTERVAL_S": "1", "NERFSERVE_REQUEUE_GRACE_S": "3",
                    "NERFSERVE_PROGRESS_INTERVAL_S": "0.2", "NERFSERVE_CANCEL_GRACE_S": "5"}
        self.env.pop("DATABASE_URL", None)
        self.env.pop("REDIS_URL", None)
        self.env.update({f"NERFSERVE_{k.upper()}": str(v) for k, v in settings.items()})
        self.procs: list[Proc] = []
        self.api: Proc | None = None
        self.key = make_key(self.data, "alice")
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def start_api(self) -> Proc:
        self.api = self._spawn([sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host",
                                "127.0.0.1", "--port", str(self.port), "--log-level", "warning"], "api")
        wait_http(f"{self.url}/healthz", proc=self.api)
        return self.api

    def start_worker(self, name: str = "w", queues: str = "cpu,gpu", concurrency: int = 1, **env: str) -> Proc:
        cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues, "--concurrency",
               str(concurrency), "--pool", "prefork", "--without-mingle", "--without-gossip", "--loglevel",
               "INFO", "-n", f"{name}-{len(self.procs)}@%h"]
        return self._spawn(cmd, f"worker-{name}-{len(self.procs)}", env)

    def _spawn(self, cmd: list[str], label: str, env: dict[str, str] | None = None) -> Proc:
        p = Proc(cmd, {**self.env, **(env or {})}, self.tmp / f"{label}.log")
        self.procs.append(p)
        return p

    def stop(self) -> None:
        self.client.close()
        for p in reversed(self.procs):
            p.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.tail()}" for p in self.procs)

    # ---- API helpers ---------------------------------------------------------------------------------

    def submit_zip(self, options: dict | None = None, n: int = 3) -> dict:
        r = self.client.post("/v1/jobs", files={"files": ("capture.zip", zip_of_images(n), "application/zip")},
                             data={"options": json.dumps(options or {})})
        assert r.status_code == 201, r.text
        return r.json()

    def job(self, job_id: str) -> dict:
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, until, timeout_s: float = 60.0, poll_s: float = 0.2) -> tuple[dict, list[dict]]:
        """Poll until until(job) is true; returns (last status, every status seen)."""
        seen: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while True:
            j = self.job(job_id)
            seen.append(j)
            if until(j):
                return j, seen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; job is {j}\n{self.logs()}")
            time.sleep(poll_s)

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout_s: float = 60.0) -> tuple[dict, list[dict]]:
        return self.wait(job_id, lambda j: j["state"] in states, timeout_s)

    def log_lines(self, job_id: str) -> list[str]:
        return self.client.get(f"/v1/jobs/{job_id}/log").json()["lines"]

    def fake_calls(self, job_id: str) -> list[str]:
        p = self.data / "jobs" / job_id / "fake_calls.txt"
        return p.read_text().split("\n")[:-1] if p.exists() else []


def wait_http(url: str, timeout_s: float = 30.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.p.poll() is not None:
            raise AssertionError(f"{proc.log.name} exited:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout_s} s" + (f"\n{proc.tail()}" if proc else ""))


def pids_with_arg(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (used to find workers a test's server started)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def reap(marker: str, timeout_s: float = 20.0) -> None:
    """Wait for the processes carrying `marker` to exit; SIGKILL any that remain after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while (pids := pids_with_arg(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
