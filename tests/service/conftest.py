"""Service test fixtures: a private Redis database per test and stacks of real processes.

Each test gets its own data dir and its own Redis database number (flushed before and after), so tests
do not see each other's messages.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tests.service.* (the fake pipeline, helpers) import from the repo root
    sys.path.insert(0, str(REPO))

from tests.service.helpers import REDIS_HOST, REDIS_PORT, Stack, redis_available  # noqa: E402


@pytest.fixture(autouse=True)
def redis_key_prefix(monkeypatch) -> Iterator[str]:
    """Every test's broker keys get their own prefix (NERFSERVE_REDIS_KEY_PREFIX, inherited by the child
    processes), so tests never see each other's messages, even when test runs overlap on one Redis."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    monkeypatch.setenv("NERFSERVE_REDIS_KEY_PREFIX", prefix)
    yield prefix


@pytest.fixture
def redis_url(redis_key_prefix: str) -> Iterator[str]:
    """The Redis at 127.0.0.1:6379 (database 9); the test's keys are deleted afterwards."""
    import redis

    if not redis_available():
        pytest.skip("needs Redis at 127.0.0.1:6379 (`redis-server` on the PATH; .ci/run starts one)")
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/9"
    yield url
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{redis_key_prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator:
    """make(broker_url, **settings) -> Stack; every stack is stopped at the end of the test."""
    stacks: list[Stack] = []

    def make(broker_url: str, **settings: object) -> Stack:
        s = Stack(tmp_path / f"stack{len(stacks)}", broker_url, **settings)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.stop()
