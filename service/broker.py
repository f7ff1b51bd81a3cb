"""Looking inside the broker: which job ids its messages hold, and queue depths.

Used by the reconciler ("is any message still carrying this job?") and /metrics. Supports the Redis
and filesystem transports; for any other broker the answers are None (unknown) and the reconciler
relies on leases alone.
"""

from __future__ import annotations

from pathlib import Path

from service.queues import broker_options
from service.settings import Settings

QUEUES = ("cpu", "gpu")


class BrokerView:
    def __init__(self, settings: Settings) -> None:
        self.url = settings.celery_broker_url
        self.settings = settings
        self._redis = None

    @property
    def kind(self) -> str:
        return self.url.split(":", 1)[0]

    def _client(self):
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        return self._redis

    def _fs_messages(self) -> list[Path]:
        folder = Path(broker_options(self.settings)["data_folder_in"])
        return [p for p in folder.glob("*.msg") if p.is_file()]

    def raw_messages(self) -> list[bytes] | None:
        """Every message waiting in a queue or delivered but not acknowledged; None if unknown."""
        if self.kind in ("redis", "rediss"):
            r, p = self._client(), self.settings.redis_key_prefix
            out: list[bytes] = []
            for q in QUEUES:
                out += r.lrange(p + q, 0, -1)
            out += list(r.hvals(p + "unacked"))
            return out
        if self.kind == "filesystem":
            out = []
            for p in self._fs_messages():
                try:
                    out.append(p.read_bytes())
                except FileNotFoundError:  # consumed meanwhile
                    continue
            return out
        return None

    def held_job_ids(self, job_ids: list[str]) -> set[str] | None:
        """Which of `job_ids` appear in some message (task ids embed the job id); None if unknown."""
        msgs = self.raw_messages()
        if msgs is None:
            return None
        blob = b"\n".join(msgs)
        return {j for j in job_ids if j.encode() in blob}

    def queue_depths(self) -> dict[str, int] | None:
        if self.kind in ("redis", "rediss"):
            r, p = self._client(), self.settings.redis_key_prefix
            return {q: int(r.llen(p + q)) for q in QUEUES}
        if self.kind == "filesystem":
            names = [p.name for p in self._fs_messages()]
            return {q: sum(n.endswith(f".{q}.msg") for n in names) for q in QUEUES}
        return None

    def ping(self) -> None:
        """Raise unless the broker answers."""
        if self.kind in ("redis", "rediss"):
            self._client().ping()
        elif self.kind == "filesystem":
            folder = Path(broker_options(self.settings)["data_folder_in"])
            if not folder.is_dir():
                raise OSError(f"broker folder {folder} is missing")
        else:
            from celery import Celery

            with Celery(broker=self.url).connection_for_write() as c:
                c.ensure_connection(max_retries=1, timeout=5)
