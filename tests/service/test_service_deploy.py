"""docker-compose.yml and the Dockerfiles, checked without a Docker engine: structure, healthchecks, the GPU
reservation, AOF, the shared volume, and that every command they run parses with our own CLIs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.service.helpers import REPO

yaml = pytest.importorskip("yaml")
COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_every_service_with_a_healthcheck(compose: dict):
    services = compose["services"]
    assert set(services) == {"api", "worker-cpu", "worker-gpu", "redis", "postgres"}
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and hc["test"], f"{name} has no healthcheck"
        assert svc.get("restart") == "unless-stopped", name


def test_gpu_worker_reserves_a_gpu_and_runs_one_job_in_a_solo_pool(compose: dict):
    gpu = compose["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    cmd = gpu["command"]
    assert cmd[cmd.index("-Q") + 1] == "gpu" and cmd[cmd.index("--pool") + 1] == "solo"
    assert cmd[cmd.index("--concurrency") + 1] == "1" and cmd[cmd.index("--prefetch-multiplier") + 1] == "1"
    assert gpu["build"]["args"]["TCNN_CUDA_ARCHITECTURES"]
    cpu = compose["services"]["worker-cpu"]["command"]
    assert cpu[cpu.index("-Q") + 1] == "cpu"


def test_redis_persists_with_aof_and_everyone_shares_the_data_volume(compose: dict):
    s = compose["services"]
    assert "--appendonly" in s["redis"]["command"] and s["redis"]["command"][s["redis"]["command"].index(
        "--appendonly") + 1] == "yes"
    for name in ("api", "worker-cpu", "worker-gpu"):
        assert "data:/data" in s[name]["volumes"], name
        env = s[name]["environment"]
        assert env["NERFSERVE_DATA_DIR"] == "/data" and env["REDIS_URL"].startswith("redis://redis:")
        assert env["DATABASE_URL"].startswith("postgresql://")
    assert set(compose["volumes"]) == {"data", "redis", "postgres"}


def test_no_default_secrets(compose: dict):
    text = COMPOSE.read_text()
    assert "${POSTGRES_PASSWORD:?" in text  # compose refuses to start without a password
    assert not re.search(r"POSTGRES_PASSWORD:\s*[\"']?\w+[\"']?\s*$", text, re.M)


def test_commands_parse_with_our_cli_and_celery_app(compose: dict):
    from cli import build_parser

    api_cmd = compose["services"]["api"]["command"]
    assert api_cmd[0] == "nerfserve"
    args = build_parser().parse_args(api_cmd[1:])
    assert (args.command, args.host, args.port, args.workers) == ("serve", "0.0.0.0", 8000, 0)
    for name in ("worker-cpu", "worker-gpu"):
        cmd = compose["services"][name]["command"]
        assert cmd[:3] == ["celery", "-A", "workers.celery_app"]
    import workers.celery_app as celery_app

    assert {q.name for q in celery_app.app.conf.task_queues} == {"cpu", "gpu"}


def _cmd(dockerfile: Path) -> list[str]:
    import json

    text = dockerfile.read_text().replace("\\\n", " ")
    return json.loads(re.findall(r"^CMD (\[.*\])\s*$", text, re.M)[-1])


def test_dockerfiles_build_tinycudann_for_the_chosen_architecture_and_run_our_commands():
    worker = (REPO / "docker" / "Dockerfile.worker").read_text()
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-cudnn-devel", worker, re.M)
    assert "ARG TCNN_CUDA_ARCHITECTURES" in worker
    assert "ENV TCNN_CUDA_ARCHITECTURES=${TCNN_CUDA_ARCHITECTURES}" in worker
    assert "git+https://github.com/NVlabs/tiny-cuda-nn/" in worker and "subdirectory=bindings/torch" in worker
    assert _cmd(REPO / "docker" / "Dockerfile.worker")[:3] == ["celery", "-A", "workers.celery_app"]
    api_cmd = _cmd(REPO / "docker" / "Dockerfile.api")
    from cli import build_parser

    assert build_parser().parse_args(api_cmd[1:]).command == "serve"
    for f in ("Dockerfile.api", "Dockerfile.worker"):
        text = (REPO / "docker" / f).read_text()
        assert "HEALTHCHECK" in text and re.search(r"^USER nerfserve$", text, re.M), f
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
            for src in shlex.split(line)[:-1]:
                assert (REPO / src).exists() or src == "README.md", f"{f}: COPY {src} is missing"
