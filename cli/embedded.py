"""`nerfserve serve`: the API plus worker processes, on one machine with nothing else installed.

The broker is, in order: REDIS_URL (or NERFSERVE_BROKER_URL) if set; else a `redis-server` child on a
free loopback port if one is on the PATH; else kombu's filesystem transport under the data dir. The
workers are ordinary `celery worker` processes running the same tasks as a scaled deployment: there is
no second execution path. With REDIS_URL and DATABASE_URL set, the same command serves one node of a
multi-machine deployment (`--workers 0` for an API-only node).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.settings import Settings

log = logging.getLogger("nerfserve.serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when `nerfserve serve` dies, even by SIGKILL (no orphans)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(cmd: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> subprocess.Popen:
    """A child in its own process group that dies with this process."""
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True,
                            preexec_fn=_die_with_parent)


def wait_for_redis(url: str, timeout_s: float = 15.0) -> None:
    import redis

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis at {url} did not come up within {timeout_s:.0f} s") from None
            time.sleep(0.1)


def start_redis(data_dir: Path) -> tuple[subprocess.Popen, str]:
    """A private redis-server on a free loopback port, AOF in data_dir/redis. Returns (process, url)."""
    port = free_port()
    d = data_dir / "redis"
    d.mkdir(parents=True, exist_ok=True)
    proc = spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(d), "--save", "",
                  "--appendonly", "yes", "--protected-mode", "yes"], quiet=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url)
    except RuntimeError:
        stop_process(proc)
        raise
    return proc, url


def choose_broker(settings: Settings, prefer: str = "auto") -> tuple[str, subprocess.Popen | None]:
    """(broker URL, child process or None). prefer: "auto" | "redis" | "filesystem"."""
    if settings.broker_url or settings.redis_url:
        return settings.celery_broker_url, None
    if prefer in ("auto", "redis") and shutil.which("redis-server"):
        proc, url = start_redis(settings.data_root)
        return url, proc
    if prefer == "redis":
        raise RuntimeError("--broker redis: no redis-server on the PATH and no REDIS_URL")
    return "filesystem://", None


def stop_process(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def worker_command(queues: str = "cpu,gpu", concurrency: int = 1, name: str = "embedded") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
            "--concurrency", str(concurrency), "--pool", "prefork", "--without-mingle", "--without-gossip",
            "--loglevel", "INFO", "-n", f"{name}-{os.getpid()}@%h"]


@dataclass
class Supervisor:
    """Keeps worker processes running (restarts one that dies) until stopped."""

    cmd: list[str]
    env: dict[str, str]
    count: int = 1
    procs: list[subprocess.Popen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        threading.Thread(target=self._watch, name="worker-supervisor", daemon=True).start()

    def _spawn(self) -> subprocess.Popen:
        return spawn(self.cmd, self.env)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for i, p in enumerate(self.procs):
                if p.poll() is not None and not self._stop.is_set():
                    log.warning("worker exited with %s; restarting it", p.returncode)
                    self.procs[i] = self._spawn()

    def stop(self) -> None:
        self._stop.set()
        for p in self.procs:
            stop_process(p)


def ensure_local_key(settings: Settings) -> Path | None:
    """On a fresh embedded install, make a key named 'local' and keep it in DATA_DIR/api_key (mode 600)."""
    from service.db import Database
    from service.keys import create_key, list_keys

    path = settings.data_root / "api_key"
    db = Database(settings.db_url)
    try:
        db.upgrade()
        if list_keys(db):
            return path if path.is_file() else None
        _, token = create_key(db, "local")
    finally:
        db.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          queues: str = "cpu,gpu", broker: str = "auto") -> None:
    """Run the API in this process and `workers` worker processes beside it, until interrupted."""
    import uvicorn

    from api.app import create_app

    settings.data_root.mkdir(parents=True, exist_ok=True)
    url, redis_proc = choose_broker(settings, broker)
    settings = settings.model_copy(update={"broker_url": url})
    env = {**os.environ, "NERFSERVE_BROKER_URL": url, "NERFSERVE_DATA_DIR": str(settings.data_root)}
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    key_path = ensure_local_key(settings)
    if key_path is not None:
        print(f"nerfserve: local API key in {key_path} (nerfserve submit reads it)", file=sys.stderr)
    print(f"nerfserve: broker {url.split('@')[-1]}, database {settings.db_url.split('@')[-1]}, "
          f"{workers} worker process(es), http://{host}:{port}/docs", file=sys.stderr)
    sup = Supervisor(worker_command(queues), env, count=workers)
    try:
        if workers > 0:
            sup.start()
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    finally:
        sup.stop()
        if redis_proc is not None:
            stop_process(redis_proc)
