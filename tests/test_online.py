"""The online endpoint on the real services: the row it answers equals the daily partition's row
for the same user and day, posted events move the as-of time and the history, the champion alias
moving reloads it, and bad requests get clear 4xx answers. Models are registered on the session's
MLflow server (this product's own Keras pyfunc, and a small real pyfunc from tests/pyfunc_models.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from pipelines.features.examples import EncodingConfig
from pipelines.features.vocab import build_vocab
from pipelines.online import server as online
from pipelines.platform import layout, storage
from pipelines.serving import scoring
from tests import pyfunc_models as pm

D1, D2, D3, D4 = (dt.date(2024, 1, day) for day in range(1, 5))
EVENTS = {
    D1: [("u1", "i1", "shoes", "view", 8), ("u1", "i2", "shoes", "buy", 9), ("u2", "i3", "books", "view", 10),
         ("u3", "i4", "toys", "view", 11)],
    D2: [("u1", "i6", "bags", "view", 8), ("u2", "i3", "books", "buy", 10), ("u3", "i7", "shoes", "fav", 13)],
    D3: [("u1", "i6", "bags", "cart", 9), ("u2", "i9", "music", "view", 11), ("u5", "i1", "shoes", "view", 20)],
    D4: [("u5", "i10", "toys", "view", 7), ("u2", "i3", "books", "view", 23)],
}
TOKEN = "test-online-token-0123456789"

pytestmark = pytest.mark.services


@pytest.fixture()
def online_settings(settings, tmp_path):
    token = tmp_path / "online_token"
    token.write_text(TOKEN + "\n")
    configured = dataclasses.replace(pm.isolate(settings), lookback_days=3, top_k=3, emerging_k=2, fading_k=2,
                                     online_token_file=token, online_reload_seconds=3600.0,
                                     online_max_body_bytes=4000, online_max_events=20)
    pm.write_clean(configured, pm.clean_events(EVENTS))
    return configured


def _keras_champion(settings, tmp_path) -> str:
    from pipelines.model.network import build_model

    vocab = build_vocab(["shoes", "books", "toys", "games", "bags", "music", "garden"], 1)
    path = tmp_path / "model.keras"
    build_model(vocab.n_categories, vocab.n_behaviors, 8, embed_dim=8, age_scale=1.0).save(path)
    return pm.register_keras_champion(settings, str(path),
                                      vocab, EncodingConfig(horizon_days=1.0, lookback_days=3.0, seq_len=8))


def _call(url: str, body: bytes | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _score(url: str, payload: dict, token: str | None = TOKEN) -> tuple[int, dict]:
    return _call(url + "/v1/score", json.dumps(payload).encode(), token)


def test_the_answer_is_the_daily_partitions_row_and_posted_events_count(online_settings, tmp_path):
    version = _keras_champion(online_settings, tmp_path)
    manifest = scoring.score_date(online_settings, D4)
    daily = {row["user_id"]: row for key in manifest["files"]
             for row in storage.read_parquet(online_settings, key).to_pylist()}
    server = online.start(online_settings, port=0)
    try:
        status, health = _call(server.url + "/healthz", token=None)
        assert (status, health["status"], health["model_version"], health["loaded_day"]) == \
            (200, "ready", version, D4.isoformat())
        for user in ("u1", "u2", "u5"):
            status, row = _score(server.url, {"user_id": user})
            assert status == 200, row
            assert row["model_version"] == version and row["as_of_date"] == D4.isoformat()
            for column in ("predicted_categories", "current_categories", "emerging_categories", "fading_categories"):
                assert row[column] == daily[user][column], (user, column)
            np.testing.assert_allclose(row["predicted_scores"], daily[user]["predicted_scores"], rtol=1e-5)
            np.testing.assert_allclose(row["migration_score"], daily[user]["migration_score"], rtol=1e-5)
        # a returning user is answered from the state's cache, the same row
        assert _score(server.url, {"user_id": "u1"}) == (200, _score(server.url, {"user_id": "u1"})[1])
        assert _call(server.url + "/healthz", token=None)[1]["answers_cached"] == 3
        assert len(server.reloader.state.answers) == 3
        # events since the partition: the as-of time moves past them and they join the history
        posted = [{"item_id": "i11", "category_id": "garden", "behavior": "buy", "ts": "2024-01-05T09:30:00Z"}]
        status, row = _score(server.url, {"user_id": "u1", "events": posted})
        assert status == 200, row
        assert row["posted_events"] == 1 and row["history_events"] == 2  # u1 in D2..D4
        assert row["as_of"] == "2024-01-05T09:30:00.000001+00:00" and row["as_of_date"] == "2024-01-05"
        assert "garden" in row["current_categories"]
        # a user the partition does not know is scored from its posted events alone
        status, row = _score(server.url, {"user_id": "new-user", "events": posted})
        assert status == 200 and row["current_categories"] == ["garden"] and row["history_events"] == 0
    finally:
        server.stop()


def test_the_endpoint_reloads_when_the_champion_alias_moves(online_settings, tmp_path):
    first = _keras_champion(online_settings, tmp_path)
    server = online.start(online_settings, port=0)
    try:
        assert server.reloader.check() is False  # nothing moved
        second = pm.register_as_champion(online_settings)  # a pyfunc from elsewhere: the public contract
        assert second != first
        assert server.reloader.check() is True
        _, health = _call(server.url + "/healthz", token=None)
        assert health["model_version"] == second
        status, row = _score(server.url, {"user_id": "u2"})
        assert status == 200 and row["model_version"] == second and row["predicted_categories"]
        # a new clean day reloads too
        pm.write_clean(online_settings, pm.clean_events({dt.date(2024, 1, 5): [("u9", "i1", "toys", "view", 3)]}))
        assert server.reloader.check() is True
        assert _score(server.url, {"user_id": "u9"})[0] == 200
    finally:
        server.stop()


def test_bad_requests_get_clear_4xx_answers(online_settings, tmp_path):
    _keras_champion(online_settings, tmp_path)
    server = online.start(online_settings, port=0)
    try:
        assert _score(server.url, {"user_id": "u1"}, token=None)[0] == 401
        assert _score(server.url, {"user_id": "u1"}, token="wrong")[0] == 401
        status, answer = _score(server.url, {"user_id": "nobody"})
        assert status == 404 and "nobody" in answer["error"] and "events" in answer["error"]
        status, answer = _score(server.url, {"user_id": "u1", "events": [{"item_id": "i1", "category_id": "shoes",
                                                                          "behavior": "view"}]})
        assert status == 400 and "events[0].ts" in answer["error"]
        status, answer = _score(server.url, {"user_id": "u1", "events": [
            {"item_id": "i1", "category_id": "shoes", "behavior": "view", "ts": "2024-01-05 10:00"}]})
        assert status == 400 and "events[0].ts" in answer["error"] and "time zone" in answer["error"]
        status, answer = _score(server.url, {"events": []})
        assert status == 400 and "user_id" in answer["error"]
        status, answer = _call(server.url + "/v1/score", b"{not json")
        assert status == 400 and "JSON" in answer["error"]
        status, answer = _score(server.url, {"user_id": "u1", "events": [{"pad": "x" * 5000}]})
        assert status == 413 and "IM_ONLINE_MAX_BODY_BYTES" in answer["error"]
        too_many = [{"item_id": "i", "category_id": "c", "behavior": "view", "ts": "2024-01-05T00:00:00Z"}] * 21
        status, answer = _score(server.url, {"user_id": "u1", "events": too_many})
        assert status == 400 and "at most 20" in answer["error"]
    finally:
        server.stop()


def test_without_a_champion_it_answers_503_and_health_says_why(online_settings):
    server = online.start(online_settings, port=0)
    try:
        _, health = _call(server.url + "/healthz", token=None)
        assert health["status"] == "no_model" and "champion" in health["error"]
        assert _score(server.url, {"user_id": "u1"})[0] == 503
    finally:
        server.stop()


def test_it_refuses_to_start_without_a_token(online_settings):
    with pytest.raises(ValueError, match="IM_ONLINE_TOKEN_FILE"):
        online.start(dataclasses.replace(online_settings, online_token_file=None), port=0)
    assert storage.list_partitions(online_settings, layout.CLEAN)  # the fixture's data is there


def test_the_answer_cache_keeps_the_most_recent_users():
    from pipelines.online.state import AnswerCache

    cache = AnswerCache(2)
    for user in ("a", "b"):
        cache.put(user, {"user_id": user})
    assert cache.get("a") == {"user_id": "a"}  # a is now the most recent
    cache.put("c", {"user_id": "c"})
    assert cache.get("b") is None and cache.get("a") and cache.get("c") and len(cache) == 2
    off = AnswerCache(0)
    off.put("a", {})
    assert off.get("a") is None and len(off) == 0


def test_the_http_layer_keeps_connections_alive_and_refuses_malformed_requests(online_settings):
    import socket

    server = online.start(online_settings, port=0)  # no champion needed: these answers come before scoring

    def exchange(raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(raw)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    try:
        # two requests on one connection: two answers, the second closes it as asked
        out = exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert out.count(b"HTTP/1.1 200 OK") == 2 and out.rstrip().endswith(b"}")
        assert exchange(b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 Bad Request")
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        assert exchange(b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
        missing_length = b"POST /v1/score HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        assert exchange(missing_length).startswith(b"HTTP/1.1 411")
        assert exchange(b"GET /elsewhere HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 404")
    finally:
        server.stop()
