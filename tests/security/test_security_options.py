"""The `options` field: deep nesting is a 422, an oversized field a 413, never a 500; nothing is kept."""

from __future__ import annotations

import pytest

from api.admission import MAX_OPTIONS_BYTES
from service import crud
from tests.security.conftest import assert_refused
from tests.service.helpers import png_bytes


@pytest.mark.parametrize("options", ["[" * 20_000, '{"a":' * 5_000 + "1" + "}" * 5_000,
                                     '{"preset": "fast", "x": ' + "[" * 30_000 + "]" * 30_000 + "}"])
def test_deeply_nested_options_are_a_422(make_api, options):
    api = make_api()
    assert len(options.encode()) <= MAX_OPTIONS_BYTES
    r = api.post([("a.png", png_bytes())], options)
    body = assert_refused(r, 422, "invalid_options", "options is nested too deeply")
    assert body["hint"]
    assert api.rows() == 0 and api.left_on_disk() == []


def test_oversized_options_are_a_413(make_api):
    api = make_api()
    options = '{"preset": "fast", "pad": "' + "x" * MAX_OPTIONS_BYTES + '"}'
    r = api.post([("a.png", png_bytes())], options)
    assert_refused(r, 413, "options_too_large", f"over the limit of {MAX_OPTIONS_BYTES}")
    assert api.rows() == 0 and api.left_on_disk() == []


def test_deeply_nested_json_bodies_are_a_400(make_api):
    api = make_api()
    job = api.post([("a.png", png_bytes())]).json()
    crud.update_job(api.db, job["id"], state="failed")
    up = api.client.post("/v1/uploads", headers=api.alice, json={"filename": "a.zip"}).json()
    nested = '{"options": ' + "[" * 20_000 + "]" * 20_000 + "}"
    for path in (f"/v1/jobs/{job['id']}/restart", f"/v1/uploads/{up['id']}/commit"):
        r = api.client.post(path, content=nested, headers={**api.alice, "Content-Type": "application/json"})
        assert_refused(r, 400, "bad_request", "error parsing the body")
    assert crud.get_job(api.db, job["id"]).state == "failed"
