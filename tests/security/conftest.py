"""Security test fixtures: the API in-process against real Redis, a fake resolver, a webhook sink, a socket spy."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.keys import create_key
from service.models import Job
from service.settings import Settings
from tests.service.helpers import FAKE, REDIS_HOST, REDIS_PORT, free_port, redis_available


@pytest.fixture(autouse=True)
def redis_key_prefix(monkeypatch) -> str:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    monkeypatch.setenv("NERFSERVE_REDIS_KEY_PREFIX", prefix)
    return prefix


@pytest.fixture
def redis_url(redis_key_prefix: str) -> Iterator[str]:
    import redis

    if not redis_available():
        pytest.skip("needs Redis at 127.0.0.1:6379")
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/9"
    yield url
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{redis_key_prefix}*", count=1000):
        client.delete(key)
    client.close()


@dataclass
class Api:
    client: TestClient
    settings: Settings
    app: object
    alice: dict

    @property
    def db(self):
        return self.app.state.services.db

    def rows(self) -> int:
        with self.db.session() as s:
            return s.query(Job).count()

    def left_on_disk(self) -> list[str]:
        """Files and folders under jobs/ and staging/."""
        root = self.settings.data_root
        return sorted(str(p.relative_to(root)) for d in ("jobs", "staging") if (root / d).is_dir()
                      for p in (root / d).rglob("*"))

    def post(self, files: list[tuple[str, bytes]], options: dict | str | None = None):
        parts = [("files", (n, b, "application/octet-stream")) for n, b in files]
        if options is not None:
            parts.append(("options", (None, options if isinstance(options, str) else json.dumps(options))))
        return self.client.post("/v1/jobs", headers=self.alice, files=parts)


@pytest.fixture
def make_api(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Api]]:
    """make_api(**settings) -> Api: an app on a temp data dir and real Redis; closed at the end of the test."""
    clients: list[TestClient] = []

    def make(**settings: object) -> Api:
        s = Settings(data_dir=tmp_path / f"data{len(clients)}", redis_url=redis_url, pipeline=FAKE,
                     max_upload_bytes=2_000_000, max_images=10, **settings)
        app = create_app(s, reconcile=False)
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        clients.append(c)
        alice = {"Authorization": f"Bearer {create_key(app.state.services.db, 'alice')[1]}"}
        return Api(c, s, app, alice)

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def assert_refused(r, status: int, code: str, *words: str) -> dict:
    """The answer is `status` with error `code`, a message holding every one of `words`, and no traceback."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code, body
    for w in words:
        assert w in body["message"], (w, body)
    assert "Traceback" not in r.text
    return body


@dataclass
class FakeDns:
    """socket.getaddrinfo for chosen names: each call takes the next answer (the last one repeats)."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def set(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)


@pytest.fixture
def fake_dns(monkeypatch) -> FakeDns:
    dns = FakeDns()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in dns.answers:
            return real(host, port, *args, **kwargs)
        dns.calls.append(name)
        queue = dns.answers[name]
        ips = queue.pop(0) if len(queue) > 1 else queue[0]
        out = []
        for ip in ips:
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            addr = (ip, int(port or 0), 0, 0) if fam == socket.AF_INET6 else (ip, int(port or 0))
            out.append((fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return dns


@pytest.fixture
def connects(monkeypatch) -> list:
    """Every address a socket in this process connects to during the test."""
    seen: list = []
    real = socket.socket.connect

    def connect(self, address):
        seen.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


class Sink:
    """An HTTP server on 127.0.0.1 that records every request (headers, body) and answers 204."""

    def __init__(self) -> None:
        sink = self
        self.calls: list[tuple[dict, bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.calls.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = HTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()
