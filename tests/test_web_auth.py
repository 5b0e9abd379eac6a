"""Network edge of the HTTP API on a real uvicorn on 127.0.0.1: writes need a token, reads stay open,
bounded input (413/422, never a 500), API docs without a CDN, tokens from config, file and environment."""

from __future__ import annotations

import re

import httpx
import pytest

from na64_online.config import load_config
from na64_online.errors import ConfigError
from na64_online.web.app import create_app
from na64_online.web.auth import TokenBook, hash_token, new_token
from na64_online.web.config import WebConfig
from na64_online.web.server import WebServer
from na64_online.web.state import AppState
from web_site import replayed_run

HUGE = "99999999999999999999999"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    replayer, registry, _, _ = replayed_run(tmp, spills=3, events=800, seed=3)
    token = new_token()
    tokens_file = tmp / "tokens"
    tokens_file.write_text("# rotated by the run coordinator\n")
    state = AppState(monitor=replayer.monitor, registry=registry)
    app = create_app(WebConfig(port=0, tokens={"alice": hash_token(token)}, tokens_file=str(tokens_file)), state)
    server = WebServer(app, "127.0.0.1", 0).start()
    with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
        yield client, token, tokens_file, state
    server.stop()
    state.close()
    replayer.close()


WRITES = [("post", "/api/alarms/high_hadron_fraction/ack", {"comment": "x"}),
          ("post", "/api/histograms/run/reset", {"reason": "x"}),
          ("put", "/api/histograms/reference", {"run": 1, "spill": 1})]


def refused_count(client, reason: str) -> float:
    m = re.search(rf'na64_web_refused_requests_total{{reason="{reason}"}} ([0-9.]+)', client.get("/metrics").text)
    return float(m.group(1))


@pytest.mark.parametrize("method,path,body", WRITES)
def test_every_write_needs_a_valid_bearer_token(site, method, path, body):
    client, token, _, _ = site
    missing, bad = refused_count(client, "missing_token"), refused_count(client, "bad_token")
    for headers in ({}, {"Authorization": "Basic YWxpY2U6eA=="}):
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    for wrong in ("Bearer guess", f"Bearer {token}x", "Bearer " + "a" * 5000):
        r = client.request(method, path, json=body, headers={"Authorization": wrong})
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert refused_count(client, "missing_token") == missing + 2
    assert refused_count(client, "bad_token") == bad + 3
    ok = client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200, ok.text
    assert ok.json().get("user", ok.json().get("acknowledged_by")) == "alice"


def test_reads_stay_open(site):
    client, *_ = site
    for path in ("/", "/api/spills", "/api/spills/latest", "/api/spills/bad", "/api/spills/1/1", "/api/alarms",
                 "/api/alarms/history", "/api/histograms/spill", "/api/histograms/run", "/api/health", "/metrics",
                 "/api/openapi.json", "/api/docs"):
        assert client.get(path).status_code == 200, path


def test_the_user_comes_from_the_token_not_from_the_body(site):
    client, token, _, _ = site
    auth = {"Authorization": f"Bearer {token}"}
    # a free-text user is no longer a field; a 200 KB one is refused before any route (413)
    named = client.post("/api/histograms/run/reset", json={"user": "mallory"}, headers=auth)
    assert named.status_code == 422 and "user" in named.text
    huge = client.post("/api/histograms/run/reset", json={"user": "x" * 200_000}, headers=auth)
    assert huge.status_code == 413
    streamed = client.post("/api/histograms/run/reset", headers={**auth, "content-type": "application/json"},
                           content=iter([b'{"reason": "', b"y" * 70_000, b'"}']))  # no Content-Length
    assert streamed.status_code == 413
    too_long = client.post("/api/histograms/run/reset", json={"reason": "r" * 201}, headers=auth)
    assert too_long.status_code == 422 and "reason" in too_long.text
    comment = client.post("/api/alarms/high_hadron_fraction/ack", json={"comment": "c" * 2001}, headers=auth)
    assert comment.status_code == 422
    assert client.post("/api/alarms/" + "n" * 300 + "/ack", json={}, headers=auth).status_code == 422
    assert refused_count(client, "body_too_large") >= 2


@pytest.mark.parametrize("path", [f"/api/spills/1/{HUGE}", f"/api/spills/{HUGE}/1", f"/api/spills?run={HUGE}",
                                  f"/api/spills/bad?run={HUGE}", f"/api/alarms/history?run={HUGE}",
                                  "/api/spills/-1/1", "/api/alarms/history?limit=0", f"/api/spills?limit={HUGE}",
                                  "/api/alarms/history?state=bogus", "/api/spills?quality=MAYBE",
                                  "/api/alarms/history?name=" + "n" * 200])
def test_out_of_range_input_is_a_422_not_a_500(site, path):
    client, *_ = site
    r = client.get(path)
    assert r.status_code == 422, (path, r.status_code, r.text[:200])
    assert "Traceback" not in r.text and isinstance(r.json()["detail"], list)


def test_reference_with_a_huge_spill_is_a_422(site):
    client, token, _, _ = site
    auth = {"Authorization": f"Bearer {token}"}
    for body in ({"run": 1, "spill": int(HUGE)}, {"run": int(HUGE)}, {"run": -1}, {"run": 1, "spill": "x"}):
        assert client.put("/api/histograms/reference", json=body, headers=auth).status_code == 422, body
    assert client.put("/api/histograms/reference", json={"run": 1, "spill": 2}, headers=auth).status_code == 200


def test_an_unexpected_error_is_a_500_without_a_traceback(site, monkeypatch):
    client, *_ = site
    archive = site[3].archive

    def broken(**_):
        raise ZeroDivisionError("deliberately")

    monkeypatch.setattr(archive, "bad_spills", broken)
    before = refused_count(client, "server_error")
    r = client.get("/api/spills/bad")
    assert r.status_code == 500 and r.json() == {"detail": "internal error (ZeroDivisionError); see the service log"}
    assert refused_count(client, "server_error") == before + 1
    monkeypatch.undo()
    assert client.get("/api/spills/bad").status_code == 200


def test_web_reads_use_their_own_read_only_archive_connection(site):
    client, _, _, state = site
    assert state.archive is not state.monitor.archive and state.archive.readonly
    with pytest.raises(Exception, match="readonly|read-only"):
        state.archive._conn.execute("DELETE FROM spills")  # noqa: SLF001
    assert [s["spill"] for s in client.get("/api/spills").json()] == [3, 2, 1]


def test_tokens_file_is_reread_so_tokens_rotate_without_a_restart(site):
    client, _, tokens_file, _ = site
    bob = new_token()
    auth = {"Authorization": f"Bearer {bob}"}
    assert client.post("/api/histograms/run/reset", headers=auth).status_code == 401
    tokens_file.write_text(f"# shift crew\nBob Smith {hash_token(bob)}\n")
    r = client.post("/api/histograms/run/reset", headers=auth)
    assert r.status_code == 200 and r.json()["user"] == "Bob Smith"
    tokens_file.write_text("")  # revoked
    assert client.post("/api/histograms/run/reset", headers=auth).status_code == 401


def test_api_docs_load_nothing_from_outside(site):
    client, *_ = site
    page = client.get("/api/docs")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert len(urls) >= 4
    for url in urls:
        assert url.startswith("/"), url  # no CDN, no other host
        assert client.get(url).status_code == 200, url
    assert "swagger-ui-bundle.js" in page.text and "//" not in "".join(urls)


def test_tokens_from_config_file_and_environment(tmp_path):
    token = new_token()
    cfg = load_config(environ={"NA64_WEB__TOKENS": f'{{ "Night Shift" = "{hash_token(token)}" }}'})
    assert TokenBook(cfg.web.tokens).user_for(token) == "Night Shift"
    path = tmp_path / "tokens"
    path.write_text(f"carol {hash_token(token)}\n")
    cfg = load_config(environ={"NA64_WEB__TOKENS_FILE": str(path)})
    assert TokenBook(cfg.web.tokens, cfg.web.tokens_file).user_for(token) == "carol"
    assert TokenBook(cfg.web.tokens, cfg.web.tokens_file).user_for("other") is None
    with pytest.raises(ConfigError, match="web.tokens.alice"):
        load_config(environ={"NA64_WEB__TOKENS": '{ alice = "plaintext" }'})
    path.write_text("carol nothash\n")
    with pytest.raises(ConfigError, match="line 1"):
        TokenBook(tokens_file=path)
    with pytest.raises(ConfigError, match="tokens_file"):
        TokenBook(tokens_file=tmp_path / "absent")


def test_example_configuration_binds_loopback_and_names_a_tokens_file():
    from pathlib import Path

    config = load_config(Path(__file__).parents[1] / "deploy" / "na64-online.toml", environ={})
    assert config.web.host == "127.0.0.1" and config.web.tokens_file
    assert config.web.max_body_bytes == 65536
