"""The HTTP API in-process (FastAPI TestClient), with a real SQLite store and a real Redis broker.

No worker runs here: these tests cover what the API itself decides (auth, limits, refusals, uploads,
downloads, cancel/restart bookkeeping). Every refusal must be a 4xx with a message and leave no files.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.pipeline import JobDirs, atomic_write_text
from service import crud
from service.keys import create_key, revoke_key
from service.models import Job
from service.settings import Settings
from tests.service.helpers import FAKE, png_bytes, zip_of_images


@dataclass
class Api:
    client: TestClient
    settings: Settings
    app: object
    alice: dict
    bob: dict

    @property
    def db(self):
        return self.app.state.services.db

    def jobs_on_disk(self) -> list[str]:
        return sorted(p.name for p in (self.settings.data_root / "jobs").iterdir())

    def staging_on_disk(self) -> list[str]:
        return sorted(p.name for p in (self.settings.data_root / "staging").iterdir())

    def rows(self) -> int:
        with self.db.session() as s:
            return s.query(Job).count()

    def post_files(self, files: list[tuple[str, bytes]], options: dict | str | None = None, who=None):
        parts = [("files", (n, b, "application/octet-stream")) for n, b in files]
        if options is not None:
            parts.append(("options", (None, options if isinstance(options, str) else json.dumps(options))))
        return self.client.post("/v1/jobs", headers=who or self.alice, files=parts)


@pytest.fixture
def api(tmp_path: Path, redis_url: str):
    s = Settings(data_dir=tmp_path / "data", redis_url=redis_url, pipeline=FAKE, max_upload_bytes=200_000,
                 max_part_bytes=50_000, max_images=10, max_jobs_in_flight=3)
    app = create_app(s, reconcile=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        db = app.state.services.db
        alice = {"Authorization": f"Bearer {create_key(db, 'alice')[1]}"}
        bob = {"Authorization": f"Bearer {create_key(db, 'bob')[1]}"}
        yield Api(c, s, app, alice, bob)


def assert_refused(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["message"], body
    assert "Traceback" not in r.text


def assert_nothing_left(api: Api) -> None:
    assert api.jobs_on_disk() == [] and api.staging_on_disk() == [] and api.rows() == 0


def test_create_job_queues_it_with_urls_and_a_log(api: Api):
    archive = zip_of_images(3)
    r = api.post_files([("capture.zip", archive)], {"preset": "fast"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] == "queued" and job["stage"] == "ingest" and job["options"]["preset"] == "fast"
    assert r.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert len(job["id"]) == 36 and job["id"].count("-") == 4  # uuid4
    inputs = JobDirs(api.settings.data_root / "jobs" / job["id"]).inputs
    assert (inputs / "capture.zip").read_bytes() == archive
    assert api.staging_on_disk() == []
    log = api.client.get(f"/v1/jobs/{job['id']}/log", headers=api.alice).json()
    assert "job created: 1 files (3 images" in log["lines"][0]
    # The message in Redis carries only the job id.
    import redis

    r = redis.Redis.from_url(api.settings.redis_url)
    msg = json.loads(r.lrange(api.settings.redis_key_prefix + "cpu", 0, -1)[0])
    assert msg["headers"]["task"] == "nerfserve.stage.ingest" and msg["headers"]["argsrepr"] == repr([job["id"]])


def test_several_images_are_accepted_and_named_safely(api: Api):
    r = api.post_files([("../../evil.png", png_bytes(1)), ("a.png", png_bytes(2)), ("a.png", png_bytes(3))])
    assert r.status_code == 201, r.text
    inputs = JobDirs(api.settings.data_root / "jobs" / r.json()["id"]).inputs
    assert sorted(p.name for p in inputs.iterdir()) == ["a.png", "a_1.png", "evil.png"]


@pytest.mark.parametrize("case", ["text", "empty", "zip_slip", "zip_link", "zip_no_images", "bad_zip", "no_files",
                                  "unknown_option", "bad_option_value", "options_not_json", "too_many_images"])
def test_bad_uploads_get_a_4xx_with_a_message_and_leave_nothing(api: Api, case: str):
    slip = zip_of_images(names=["images/ok.png", "../../outside.png"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("images/link.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    link = buf.getvalue()
    notes = zipfile.ZipFile(io.BytesIO(), "w")
    notes.close()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    no_images = buf.getvalue()
    cases = {
        "text": (([("notes.txt", b"just some text")], None), 415, "unsupported_file"),
        "empty": (([("a.png", b"")], None), 400, "empty_file"),
        "zip_slip": (([("slip.zip", slip)], None), 400, "zip_unsafe_path"),
        "zip_link": (([("link.zip", link)], None), 400, "zip_unsafe_path"),
        "zip_no_images": (([("docs.zip", no_images)], None), 400, "no_images"),
        "bad_zip": (([("broken.zip", b"PK\x03\x04" + b"\x00" * 40)], None), 400, "zip_corrupt"),
        "no_files": (([], {"preset": "fast"}), 400, "no_files"),
        "unknown_option": (([("a.png", png_bytes())], {"presett": "fast"}), 422, "invalid_options"),
        "bad_option_value": (([("a.png", png_bytes())], {"preset": "ultra"}), 422, "invalid_options"),
        "options_not_json": (([("a.png", png_bytes())], "{preset: fast"), 422, "invalid_options"),
        "too_many_images": (([(f"{i}.png", png_bytes(i, 4)) for i in range(11)], None), 413, "too_many_images"),
    }
    (files, options), status, code = cases[case]
    r = api.post_files(files, options)
    assert_refused(r, status, code)
    assert_nothing_left(api)


def test_oversize_upload_is_413_before_it_is_stored(api: Api):
    big = b"\xff\xd8\xff" + b"\x00" * 300_000
    r = api.post_files([("big.jpg", big)])
    assert_refused(r, 413, "too_large")
    assert "200000" in r.json()["message"]
    assert_nothing_left(api)

    # Without a Content-Length (chunked), the body is counted as it streams and cut off the same way.
    def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    r = api.client.post("/v1/jobs", headers={**api.alice, "Content-Type": "multipart/form-data; boundary=zz"},
                        content=chunks())
    assert_refused(r, 413, "too_large")
    assert_nothing_left(api)


def test_auth_missing_invalid_revoked_and_other_keys_jobs(api: Api):
    job = api.post_files([("a.png", png_bytes())]).json()
    assert_refused(api.client.get("/v1/jobs"), 401, "missing_api_key")
    assert_refused(api.client.get("/v1/jobs", headers={"Authorization": "Bearer nsk_nope"}), 401, "invalid_api_key")
    assert_refused(api.client.get("/v1/jobs", headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401,
                   "missing_api_key")
    assert api.client.get("/v1/jobs").headers["www-authenticate"] == "Bearer"
    jid = job["id"]
    for method, path in [("GET", f"/v1/jobs/{jid}"), ("GET", f"/v1/jobs/{jid}/log"),
                         ("POST", f"/v1/jobs/{jid}/cancel"), ("POST", f"/v1/jobs/{jid}/restart"),
                         ("GET", f"/v1/jobs/{jid}/artifacts"), ("GET", f"/v1/jobs/{jid}/artifacts/mesh.ply"),
                         ("DELETE", f"/v1/jobs/{jid}")]:
        r = api.client.request(method, path, headers=api.bob)
        assert_refused(r, 404, "job_not_found")
    assert api.client.get("/v1/jobs", headers=api.bob).json()["total"] == 0
    assert_refused(api.client.get("/v1/jobs/00000000-0000-4000-8000-000000000000", headers=api.alice), 404,
                   "job_not_found")
    assert api.client.get(f"/v1/jobs/{jid}", headers=api.alice).status_code == 200  # still there
    revoke_key(api.db, "alice")
    assert_refused(api.client.get(f"/v1/jobs/{jid}", headers=api.alice), 401, "invalid_api_key")


def test_keys_are_stored_hashed(api: Api):
    from service.keys import list_keys

    token = api.alice["Authorization"].split()[1]
    keys = {k.name: k for k in list_keys(api.db)}
    assert keys["alice"].key_hash == hashlib.sha256(token.encode()).hexdigest()
    raw = (api.settings.data_root / "nerfserve.db").read_bytes()
    assert token.encode() not in raw


def test_jobs_in_flight_limit_is_429(api: Api):
    for _ in range(3):
        assert api.post_files([("a.png", png_bytes())]).status_code == 201
    r = api.post_files([("a.png", png_bytes())])
    assert_refused(r, 429, "too_many_jobs")
    assert r.headers["retry-after"]
    assert api.post_files([("a.png", png_bytes())], who=api.bob).status_code == 201  # per key


def test_list_is_paginated_newest_first(api: Api):
    ids = [api.post_files([("a.png", png_bytes())]).json()["id"] for _ in range(3)]
    page = api.client.get("/v1/jobs", params={"limit": 2}, headers=api.alice).json()
    assert page["total"] == 3 and [j["id"] for j in page["items"]] == ids[::-1][:2] and page["next"]
    page2 = api.client.get(page["next"], headers=api.alice).json()
    assert [j["id"] for j in page2["items"]] == ids[:1] and page2["next"] is None
    assert_refused(api.client.get("/v1/jobs", params={"limit": 0}, headers=api.alice), 422, "invalid_request")


def _fake_outputs(api: Api, job_id: str) -> bytes:
    dirs = JobDirs(api.settings.data_root / "jobs" / job_id)
    data = bytes(range(256)) * 4
    (dirs.outputs / "depth").mkdir(parents=True)
    (dirs.outputs / "depth" / "d.bin").write_bytes(data)
    (dirs.root / "secret.txt").write_text("not an artifact")
    atomic_write_text(dirs.outputs / "manifest.json", json.dumps({"files": [
        {"path": "depth/d.bin", "kind": "depth", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
        "frame": {"units": "arbitrary"}}))
    return data


def test_artifacts_manifest_range_and_path_traversal(api: Api):
    jid = api.post_files([("a.png", png_bytes())]).json()["id"]
    assert_refused(api.client.get(f"/v1/jobs/{jid}/artifacts", headers=api.alice), 409, "no_artifacts_yet")
    data = _fake_outputs(api, jid)
    m = api.client.get(f"/v1/jobs/{jid}/artifacts", headers=api.alice).json()
    assert m["frame"] == {"units": "arbitrary"}
    assert m["files"][0]["url"].endswith(f"/v1/jobs/{jid}/artifacts/depth/d.bin")
    r = api.client.get(m["files"][0]["url"], headers=api.alice)
    assert r.status_code == 200 and r.content == data and r.headers["accept-ranges"] == "bytes"
    r = api.client.get(m["files"][0]["url"], headers={**api.alice, "Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    for bad in ["..%2Fsecret.txt", "depth/..%2F..%2Fsecret.txt", "%2E%2E/secret.txt", "depth%5C..%5C..%5Csecret.txt"]:
        r = api.client.get(f"/v1/jobs/{jid}/artifacts/{bad}", headers=api.alice)
        assert r.status_code in (400, 404), (bad, r.status_code)
        assert "not an artifact" not in r.text
    r = api.client.get(f"/v1/jobs/{jid}/artifacts/..%2Fsecret.txt", headers=api.alice)
    assert_refused(r, 400, "unsafe_path")
    assert_refused(api.client.get(f"/v1/jobs/{jid}/artifacts/depth/none.bin", headers=api.alice), 404,
                   "artifact_not_found")


def test_cancel_queued_job_is_immediate_and_restart_requeues_it(api: Api):
    jid = api.post_files([("a.png", png_bytes())]).json()["id"]
    r = api.client.post(f"/v1/jobs/{jid}/cancel", headers=api.alice)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = api.client.post(f"/v1/jobs/{jid}/restart", headers=api.alice, json={"options": {"preset": "quality"}})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "queued" and r.json()["options"]["preset"] == "quality"
    assert_refused(api.client.post(f"/v1/jobs/{jid}/restart", headers=api.alice), 409, "job_running")
    assert_refused(api.client.post(f"/v1/jobs/{jid}/restart", headers=api.alice,
                                   json={"options": {"bogus": 1}}), 409, "job_running")


def test_restart_from_last_completed_stage_with_new_export_options(api: Api):
    jid = api.post_files([("a.png", png_bytes())]).json()["id"]
    _fake_outputs(api, jid)
    dirs = JobDirs(api.settings.data_root / "jobs" / jid)
    for s in ("ingest", "poses", "train", "export"):
        atomic_write_text(dirs.marker(s), "{}")
    crud.update_job(api.db, jid, state="succeeded", stage=None, done_stages=["ingest", "poses", "train", "export"],
                     progress=100.0)
    assert_refused(api.client.post(f"/v1/jobs/{jid}/restart", headers=api.alice), 409, "nothing_to_redo")
    assert_refused(api.client.post(f"/v1/jobs/{jid}/restart", headers=api.alice,
                                   json={"options": {"mesh_resolution": 5}}), 422, "invalid_options")
    r = api.client.post(f"/v1/jobs/{jid}/restart", headers=api.alice, json={"options": {"mesh_resolution": 512}})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["state"] == "exporting" and j["stage"] == "export" and j["progress"] == 90
    assert dirs.marker("train").exists() and not dirs.marker("export").exists()
    assert not (dirs.outputs / "manifest.json").exists()


def test_delete_removes_row_and_files(api: Api):
    jid = api.post_files([("a.png", png_bytes())]).json()["id"]
    assert api.client.delete(f"/v1/jobs/{jid}", headers=api.alice).status_code == 204
    assert_nothing_left(api)
    assert_refused(api.client.get(f"/v1/jobs/{jid}", headers=api.alice), 404, "job_not_found")


def test_resumable_upload_parts_checksums_resume_and_commit(api: Api):
    payload = zip_of_images(6)
    parts = [payload[i:i + 1000] for i in range(0, len(payload), 1000)]
    up = api.client.post("/v1/uploads", headers=api.alice, json={"filename": "cap.zip", "size": len(payload)})
    assert up.status_code == 201, up.text
    up = up.json()
    assert api.client.get(f"/v1/jobs/{up['job_id']}", headers=api.alice).json()["state"] == "uploading"

    def put(n: int, data: bytes, sha: str | None = None):
        return api.client.put(f"/v1/uploads/{up['id']}/parts/{n}", content=data, headers={
            **api.alice, "X-Part-SHA256": sha or hashlib.sha256(data).hexdigest()})

    assert_refused(put(1, parts[0], "0" * 64), 400, "part_checksum_mismatch")
    for n in (3, 1):  # out of order; then "the connection drops"
        assert put(n, parts[n - 1]).json()["sha256"] == hashlib.sha256(parts[n - 1]).hexdigest()
    assert_refused(api.client.post(f"/v1/uploads/{up['id']}/commit", headers=api.alice), 400, "missing_parts")
    # Resume: ask what arrived, send the rest.
    have = {p["number"] for p in api.client.get(f"/v1/uploads/{up['id']}", headers=api.alice).json()["parts"]}
    assert have == {1, 3}
    for n in range(1, len(parts) + 1):
        if n not in have:
            assert put(n, parts[n - 1]).status_code == 200
    assert_refused(api.client.get(f"/v1/uploads/{up['id']}", headers=api.bob), 404, "upload_not_found")
    r = api.client.post(f"/v1/uploads/{up['id']}/commit", headers=api.alice, json={"options": {"steps": 7}})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["id"] == up["job_id"] and job["state"] == "queued" and job["options"]["steps"] == 7
    inputs = JobDirs(api.settings.data_root / "jobs" / job["id"]).inputs
    assert (inputs / "cap.zip").read_bytes() == payload
    assert not api.settings.data_root.joinpath("uploads", up["id"]).exists()
    assert_refused(api.client.post(f"/v1/uploads/{up['id']}/commit", headers=api.alice), 409, "upload_not_open")


def test_resumable_upload_limits_and_bad_content(api: Api):
    assert_refused(api.client.post("/v1/uploads", headers=api.alice, json={"filename": "a.exe"}), 415,
                   "unsupported_file")
    assert_refused(api.client.post("/v1/uploads", headers=api.alice, json={"filename": "a.zip", "size": 10**9}),
                   413, "too_large")
    up = api.client.post("/v1/uploads", headers=api.alice, json={"filename": "a.zip"}).json()
    data = b"y" * 60_000
    r = api.client.put(f"/v1/uploads/{up['id']}/parts/1", content=data,
                       headers={**api.alice, "X-Part-SHA256": hashlib.sha256(data).hexdigest()})
    assert_refused(r, 413, "too_large")
    data = b"not a zip at all"
    api.client.put(f"/v1/uploads/{up['id']}/parts/1", content=data,
                   headers={**api.alice, "X-Part-SHA256": hashlib.sha256(data).hexdigest()})
    r = api.client.post(f"/v1/uploads/{up['id']}/commit", headers=api.alice)
    assert_refused(r, 415, "unsupported_file")
    assert api.client.get(f"/v1/jobs/{up['job_id']}", headers=api.alice).json()["state"] == "uploading"
    assert api.staging_on_disk() == []


def test_renders_need_a_trained_job_and_valid_poses(api: Api):
    jid = api.post_files([("a.png", png_bytes())]).json()["id"]
    eye = [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    body = {"poses": [eye], "width": 64, "height": 48}
    assert_refused(api.client.post(f"/v1/jobs/{jid}/renders", headers=api.alice, json=body), 409, "not_trained")
    crud.update_job(api.db, jid, done_stages=["ingest", "poses", "train"])
    bad = {**body, "poses": [[[1.0, 0, 0], [0, 1, 0]]]}
    assert_refused(api.client.post(f"/v1/jobs/{jid}/renders", headers=api.alice, json=bad), 422, "invalid_request")
    r = api.client.post(f"/v1/jobs/{jid}/renders", headers=api.alice, json=body)
    assert r.status_code == 202 and r.json()["state"] == "queued"
    rid = r.json()["id"]
    assert api.client.get(f"/v1/jobs/{jid}/renders/{rid}", headers=api.alice).json()["state"] == "queued"
    assert_refused(api.client.get(f"/v1/jobs/{jid}/renders/{rid}", headers=api.bob), 404, "job_not_found")


def test_health_ready_and_metrics(api: Api):
    api.post_files([("a.png", png_bytes())])
    assert api.client.get("/healthz").json() == {"status": "ok"}
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    text = api.client.get("/metrics").text
    assert 'nerfserve_jobs{state="queued"} 1' in text and 'nerfserve_queue_depth{queue="cpu"} 1' in text
    assert "nerfserve_broker_up 1" in text


def test_readyz_is_503_when_the_broker_is_down_and_jobs_still_get_created(tmp_path: Path):
    from tests.service.helpers import free_port

    s = Settings(data_dir=tmp_path / "d", redis_url=f"redis://127.0.0.1:{free_port()}/0", pipeline=FAKE)
    app = create_app(s, reconcile=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        h = {"Authorization": f"Bearer {create_key(app.state.services.db, 'k')[1]}"}
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["broker"].startswith("error")
        r = c.post("/v1/jobs", headers=h, files={"files": ("a.png", png_bytes(), "image/png")})
        assert r.status_code == 201  # queued; the reconciler publishes it once the broker is back
        job = crud.get_job(app.state.services.db, r.json()["id"])
        assert job.state == "queued" and job.enqueued_at is None
        assert "nerfserve_broker_up 0" in c.get("/metrics").text


def test_unknown_routes_and_methods_are_json_4xx(api: Api):
    r = api.client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = api.client.put("/v1/jobs", headers=api.alice)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = api.client.post("/v1/jobs", headers={**api.alice, "Content-Type": "application/json"}, content=b"{}")
    assert_refused(r, 415, "multipart_required")


# ---- fuzzing: schemathesis against the app's own OpenAPI schema ------------------------------------------

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture
def fuzz_target(tmp_path: Path, redis_url: str):
    """The app (lifespan started) and a valid key: the fuzzer gets past auth and reaches the handlers."""
    s = Settings(data_dir=tmp_path / "data", redis_url=redis_url, pipeline=FAKE, max_upload_bytes=100_000,
                 max_jobs_in_flight=10_000)
    app = create_app(s, reconcile=False)
    with TestClient(app, raise_server_exceptions=False):
        token = create_key(app.state.services.db, "fuzz")[1]
        yield app, {"Authorization": f"Bearer {token}"}


def test_fuzzing_finds_no_server_errors(fuzz_target):
    """Every operation, with generated (valid and invalid) inputs and a valid key: never a 5xx."""
    from hypothesis import HealthCheck, given, settings

    app, auth = fuzz_target
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15
    statuses: set[int] = set()
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            response = case.call(headers=auth)
            assert response.status_code < 500, (f"{case.method} {case.formatted_path}: "
                                                f"{response.status_code} {response.text[:300]}")
            assert "Traceback" not in response.text
            statuses.add(response.status_code)

        check()
    # It reached the handlers (successes) and their refusals, not only the auth layer.
    assert {200, 404, 422} <= statuses and statuses & {400, 409, 413, 415}, statuses
