"""Webhook targets: internal addresses are refused at submission and again right before the worker connects."""

from __future__ import annotations

import hashlib
import json

import pytest

from core.pipeline import load_pipeline
from service import crud, netguard
from service.settings import Settings
from tests.security.conftest import assert_refused
from tests.service.helpers import png_bytes
from workers.runner import WorkerContext
from workers.webhooks import SIGNATURE_HEADER, deliver, sign

HINT = "NERFSERVE_WEBHOOK_ALLOW_HOSTS"


@pytest.mark.parametrize(("url", "host", "why"), [
    ("http://127.0.0.1:9999/internal-admin", "127.0.0.1", "loopback"),
    ("http://localhost:6379/", "localhost", "loopback"),
    ("http://[::1]:8080/hook", "::1", "loopback"),
    ("http://10.1.2.3/hook", "10.1.2.3", "private"),
    ("http://192.168.0.10/hook", "192.168.0.10", "private"),
    ("http://[fd12::1]/hook", "fd12::1", "private"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
    ("http://0.0.0.0:8000/", "0.0.0.0", "unspecified"),
    ("http://224.0.0.1/", "224.0.0.1", "multicast"),
    ("http://240.0.0.1/", "240.0.0.1", "reserved"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1", "loopback"),
    ("http://rebind.example.test/hook", "rebind.example.test", "resolves to 127.0.0.1, which is a loopback"),
    ("http://mixed.example.test/hook", "mixed.example.test", "resolves to 10.0.0.7, which is a private"),
])
def test_internal_webhook_targets_are_refused_at_submission(make_api, fake_dns, connects, url, host, why):
    fake_dns.set("rebind.example.test", ["127.0.0.1"])
    fake_dns.set("mixed.example.test", ["93.184.216.34", "10.0.0.7"])  # one refused address is enough
    api = make_api()
    r = api.post([("a.png", png_bytes())], {"webhook_url": url})
    body = assert_refused(r, 422, "invalid_options", "webhook_url", host, why)
    assert HINT in body["hint"]
    assert api.rows() == 0 and api.left_on_disk() == []
    assert not [a for a in connects if a[1] in (9999, 6379, 8080, 8000, 80)]


def test_public_targets_are_accepted_without_a_request(make_api, fake_dns, connects):
    fake_dns.set("hooks.example.test", ["93.184.216.34"])
    api = make_api()
    for url in ("http://93.184.216.34/hook", "https://hooks.example.test:8443/x"):
        r = api.post([("a.png", png_bytes())], {"webhook_url": url})
        assert r.status_code == 201, r.text
        assert r.json()["options"]["webhook_url"] == url
    assert fake_dns.calls == ["hooks.example.test"]
    assert not [a for a in connects if a[0] == "93.184.216.34"]


def test_the_allow_list_admits_named_hosts_and_networks(make_api, fake_dns):
    fake_dns.set("hooks.internal", ["10.0.0.5"])
    api = make_api(webhook_allow_hosts=["hooks.internal", "127.0.0.0/8"])
    for url in ("http://hooks.internal:8080/x", "http://127.0.0.1:9999/x", "http://localhost.:9999/x"):
        r = api.post([("a.png", png_bytes())], {"webhook_url": url})
        assert r.status_code == 201, (url, r.text)
    assert_refused(api.post([("a.png", png_bytes())], {"webhook_url": "http://10.0.0.5/x"}), 422,
                   "invalid_options", "10.0.0.5", "private")


def test_the_allow_list_setting_reads_a_comma_separated_env(monkeypatch):
    monkeypatch.setenv("NERFSERVE_WEBHOOK_ALLOW_HOSTS", " hooks.internal, 10.0.0.0/8 ,")
    assert Settings().webhook_allow_hosts == ["hooks.internal", "10.0.0.0/8"]
    monkeypatch.delenv("NERFSERVE_WEBHOOK_ALLOW_HOSTS")
    assert Settings().webhook_allow_hosts == []


def test_restart_and_resumable_commit_check_the_target_too(make_api):
    api = make_api()
    job = api.post([("a.png", png_bytes())]).json()
    crud.update_job(api.db, job["id"], state="failed")
    r = api.client.post(f"/v1/jobs/{job['id']}/restart", headers=api.alice,
                        json={"options": {"webhook_url": "http://169.254.169.254/"}})
    assert_refused(r, 422, "invalid_options", "169.254.169.254", "link-local")
    assert crud.get_job(api.db, job["id"]).state == "failed"

    up = api.client.post("/v1/uploads", headers=api.alice, json={"filename": "a.png"}).json()
    data = png_bytes()
    r = api.client.put(f"/v1/uploads/{up['id']}/parts/1", content=data,
                       headers={**api.alice, "X-Part-Sha256": hashlib.sha256(data).hexdigest()})
    assert r.status_code == 200, r.text
    r = api.client.post(up["urls"]["commit"], headers=api.alice,
                        json={"options": {"webhook_url": "http://127.0.0.1:6379/"}})
    assert_refused(r, 422, "invalid_options", "127.0.0.1", "loopback")
    assert not list(api.settings.data_root.joinpath("staging").iterdir())


def _worker(api) -> WorkerContext:
    svc = api.app.state.services
    return WorkerContext(settings=api.settings, db=svc.db, storage=svc.storage,
                         pipeline=load_pipeline(api.settings.pipeline), enqueue_stage=lambda j, s: None,
                         enqueue_webhook=lambda j: None)


def test_the_worker_refuses_a_name_rebound_to_loopback_and_sends_nothing(make_api, fake_dns, sink, connects):
    fake_dns.set("rebind.example.test", ["93.184.216.34"], ["127.0.0.1"])
    api = make_api(webhook_secret="k3y-for-tests")
    url = f"http://rebind.example.test:{sink.port}/hook"
    r = api.post([("a.png", png_bytes())], {"webhook_url": url})
    assert r.status_code == 201, r.text  # public at submission
    jid = r.json()["id"]
    crud.update_job(api.db, jid, state="succeeded")
    status, retry = deliver(_worker(api), jid, attempt=1)
    assert status.startswith("refused: host rebind.example.test resolves to 127.0.0.1, which is a loopback")
    assert retry is False
    assert crud.get_job(api.db, jid).webhook_status == status
    assert sink.calls == [] and not [a for a in connects if a[1] == sink.port]
    assert fake_dns.calls == ["rebind.example.test", "rebind.example.test"]


def test_the_worker_refuses_an_internal_target_stored_before_the_check(make_api, sink, connects):
    api = make_api()
    jid = api.post([("a.png", png_bytes())]).json()["id"]
    options = {**crud.get_job(api.db, jid).options, "webhook_url": f"http://127.0.0.1:{sink.port}/x"}
    crud.update_job(api.db, jid, state="failed", options=options)
    status, retry = deliver(_worker(api), jid, attempt=1)
    assert status.startswith("refused: host 127.0.0.1 is a loopback address") and retry is False
    assert sink.calls == [] and not [a for a in connects if a[1] == sink.port]


def test_the_worker_posts_to_the_checked_address_with_host_and_signature(make_api, fake_dns, sink):
    fake_dns.set("hooks.internal", ["127.0.0.1"])
    api = make_api(webhook_secret="k3y-for-tests", webhook_allow_hosts=["hooks.internal"])
    jid = api.post([("a.png", png_bytes())], {"webhook_url": f"http://hooks.internal:{sink.port}/hook"}).json()["id"]
    crud.update_job(api.db, jid, state="succeeded")
    fake_dns.calls.clear()
    status, retry = deliver(_worker(api), jid, attempt=1)
    assert status == "delivered: HTTP 204 (attempt 1)" and retry is False
    assert fake_dns.calls == ["hooks.internal"]  # resolved once; the connection went to that address
    (headers, body), = sink.calls
    assert headers["Host"] == f"hooks.internal:{sink.port}"
    assert headers[SIGNATURE_HEADER] == sign("k3y-for-tests", body)
    assert json.loads(body)["event"] == "job.succeeded"


@pytest.mark.parametrize(("address", "reason"), [
    ("2002:7f00:1::1", "loopback"), ("64:ff9b::a00:1", "private"), ("100.64.0.1", "reserved"),
    ("fe80::1", "link-local"), ("ff02::1", "multicast"), ("2001:db8::1", "reserved"),
])
def test_embedded_and_special_purpose_addresses_are_refused(address, reason):
    got = netguard.refusal_reason(netguard.parse_ip(address))
    assert got is not None and reason in got
    assert netguard.refusal_reason(netguard.parse_ip("64:ff9b::5db8:d822")) is None  # NAT64 of a public address
