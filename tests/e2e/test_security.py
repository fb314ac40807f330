"""Safe to expose: tokens, bounded and well-typed bodies, no internals in answers.

One ``bentoml serve`` with both a write and a read token, over a Redis with
demo data; every refusal is checked to have written nothing.
"""

from __future__ import annotations

import gzip
import html.parser
import json
import secrets
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.cli.demo import load_demo_data
from service.harness.local_redis import LocalRedis
from tests.e2e.conftest import PATIENT, start_service, stop

NOW = int(time.time())
POST_PATHS = ["/score", "/score_batch", "/features", "/push"]


@dataclass
class Guarded:
    """A served ScoringService with both tokens set, and an anonymous client for it."""

    client: httpx.Client
    redis: LocalRedis
    write_token: str
    read_token: str
    log_path: Path

    def as_writer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.write_token}"}

    def as_reader(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.read_token}"}


@pytest.fixture(scope="module")
def guarded(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    write_token, read_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with LocalRedis() as redis_server:
        load_demo_data(redis_server.url, 20, tmp_path_factory.mktemp("demo"))
        log_dir = tmp_path_factory.mktemp("logs")
        process, url, log_path = start_service(
            bentoml_home,
            redis_server,
            log_dir,
            FEATSERVE_WRITE_TOKEN=write_token,
            FEATSERVE_READ_TOKEN=read_token,
            FEATSERVE_METRICS_ACCESS="read",
            FEATSERVE_CACHE_TTL_S="0",
            **PATIENT,
        )
        try:
            with httpx.Client(base_url=url, timeout=10.0) as client:
                yield Guarded(client, redis_server, write_token, read_token, log_path)
        finally:
            stop(process)


def update(entity_id: str, **values: Any) -> dict[str, Any]:
    return {"entity_id": entity_id, "event_timestamp": NOW, "values": values}


def push(guarded: Guarded, *updates: dict[str, Any]) -> httpx.Response:
    return guarded.client.post(
        "/push", json={"updates": list(updates)}, headers=guarded.as_writer()
    )


def stored_keys(guarded: Guarded, entity_id: str) -> list[bytes]:
    with redis.Redis.from_url(guarded.redis.url) as inspector:
        return list(inspector.scan_iter(f"user:{{{entity_id}}}:*"))


# --- tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-the-token"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["none", "wrong", "not-bearer"],
)
def test_push_and_status_need_the_write_token(guarded: Guarded, headers: dict[str, str]) -> None:
    refused_push = guarded.client.post(
        "/push", json={"updates": [update("t1", tx_count_1h=1)]}, headers=headers
    )
    refused_status = guarded.client.get("/ops/status", headers=headers)
    for refused in (refused_push, refused_status):
        assert refused.status_code == 401, refused.text
        assert refused.headers["WWW-Authenticate"].startswith('Bearer realm="featserve"')
        assert "write token" in refused.json()["error"]
    assert stored_keys(guarded, "t1") == []


def test_a_wrong_token_is_told_apart_from_none(guarded: Guarded) -> None:
    none = guarded.client.get("/ops/status")
    wrong = guarded.client.get("/ops/status", headers={"Authorization": "Bearer nope"})
    assert "error=" not in none.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]


def test_the_read_token_does_not_open_writes(guarded: Guarded) -> None:
    response = guarded.client.post(
        "/push", json={"updates": [update("t2", tx_count_1h=1)]}, headers=guarded.as_reader()
    )
    assert response.status_code == 401
    assert guarded.client.get("/ops/status", headers=guarded.as_reader()).status_code == 401
    assert stored_keys(guarded, "t2") == []


def test_the_write_token_writes_and_reads_the_status(guarded: Guarded) -> None:
    response = push(guarded, update("t3", tx_count_1h=7))
    assert response.status_code == 200, response.text
    assert response.json() == {"written": 1, "stale": [], "expired": []}
    assert stored_keys(guarded, "t3") == [b"user:{t3}:features"]
    status = guarded.client.get("/ops/status", headers=guarded.as_writer())
    assert status.status_code == 200
    assert status.json()["redis"] == "up"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/score", {"entity_id": "u000001", "amount": 5.0}),
        ("/score_batch", {"requests": [{"entity_id": "u000001", "amount": 5.0}]}),
        ("/features", {"entity_ids": ["u000001"]}),
    ],
)
def test_reads_need_the_read_or_the_write_token(
    guarded: Guarded, path: str, body: dict[str, Any]
) -> None:
    anonymous = guarded.client.post(path, json=body)
    assert anonymous.status_code == 401
    assert "read token" in anonymous.json()["error"]
    assert guarded.client.post(path, json=body, headers=guarded.as_reader()).status_code == 200
    assert guarded.client.post(path, json=body, headers=guarded.as_writer()).status_code == 200


@pytest.mark.parametrize("path", ["/readyz", "/livez"])
def test_probes_stay_open(guarded: Guarded, path: str) -> None:
    assert guarded.client.get(path).status_code == 200


def test_metrics_can_be_put_behind_the_read_token(guarded: Guarded) -> None:
    assert guarded.client.get("/metrics").status_code == 401
    scraped = guarded.client.get("/metrics", headers=guarded.as_reader())
    assert scraped.status_code == 200
    assert "featserve_answers_total" in scraped.text


# --- near misses: each route class refuses every token that is almost right ---------------

ROUTE_CLASSES = {
    "write": ("POST", "/push", {"updates": [update("nm1", tx_count_1h=1)]}),
    "operations": ("GET", "/ops/status", None),
    "read": ("POST", "/score", {"entity_id": "u000001", "amount": 5.0}),
    "metrics": ("GET", "/metrics", None),
}


def near_misses(token: str) -> dict[str, str]:
    """Authorization values that an off-by-one comparison would let through."""
    assert token.swapcase() != token
    return {
        "prefix": f"Bearer {token[:-1]}",
        "first half": f"Bearer {token[: len(token) // 2]}",
        "suffix": f"Bearer {token[1:]}",
        "token plus a character": f"Bearer {token}x",
        "case changed": f"Bearer {token.swapcase()}",
        "empty bearer": "Bearer ",
        "bearer alone": "Bearer",
        "another scheme": f"Token {token}",
    }


def raw_status(guarded: Guarded, method: str, path: str, body: Any, authorization: str) -> int:
    """The status of one request sent as written (httpx refuses a header value ending in a
    space, such as an empty bearer token)."""
    url = httpx.URL(str(guarded.client.base_url))
    content = b"" if body is None else json.dumps(body).encode()
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: featserve\r\nConnection: close\r\n"
        f"Authorization: {authorization}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(content)}\r\n\r\n"
    ).encode() + content
    with socket.create_connection((url.host, url.port), timeout=10) as connection:
        connection.sendall(request)
        answer = connection.makefile("rb").readline()
    return int(answer.split()[1])


def test_near_miss_tokens_are_refused_on_every_route_class(guarded: Guarded) -> None:
    accepted = {
        "write": [guarded.write_token],
        "operations": [guarded.write_token],
        "read": [guarded.read_token, guarded.write_token],
        "metrics": [guarded.read_token, guarded.write_token],
    }
    failures = []
    for route_class, (method, path, body) in ROUTE_CLASSES.items():
        for token in accepted[route_class]:
            for name, authorization in near_misses(token).items():
                status = raw_status(guarded, method, path, body, authorization)
                if status != 401:
                    failures.append((route_class, name, status))
    assert failures == []
    assert stored_keys(guarded, "nm1") == []


@pytest.mark.parametrize("route_class", ["write", "operations"])
def test_the_read_token_is_refused_where_the_write_token_is_needed(
    guarded: Guarded, route_class: str
) -> None:
    method, path, body = ROUTE_CLASSES[route_class]
    response = guarded.client.request(method, path, json=body, headers=guarded.as_reader())
    assert response.status_code == 401
    assert stored_keys(guarded, "nm1") == []


@pytest.mark.parametrize("route_class", ROUTE_CLASSES)
def test_the_right_token_still_opens_each_route_class(guarded: Guarded, route_class: str) -> None:
    method, path, body = ROUTE_CLASSES[route_class]
    if route_class == "write":
        body = {"updates": [update("nm2", tx_count_1h=1)]}
    response = guarded.client.request(method, path, json=body, headers=guarded.as_writer())
    assert response.status_code == 200, response.text


# --- bodies ------------------------------------------------------------------------------


def test_a_two_mib_body_is_refused_with_413_and_nothing_is_written(guarded: Guarded) -> None:
    padding = "x" * (2 << 20)
    body = json.dumps({"updates": [update("big1", tx_count_1h=1)], "padding": padding})
    response = guarded.client.post(
        "/push",
        content=body.encode(),
        headers={**guarded.as_writer(), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "FEATSERVE_MAX_BODY_BYTES" in response.json()["error"]
    assert stored_keys(guarded, "big1") == []


def test_a_streamed_body_without_a_length_is_cut_off_at_the_limit(guarded: Guarded) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"updates": [{"entity_id": "big2", "event_timestamp": 1, '
        yield b'"values": {"tx_count_1h": 1}}], "padding": "'
        for _ in range(64):
            sent += 64 << 10
            yield b"x" * (64 << 10)
        yield b'"}'

    try:
        response = guarded.client.post(
            "/push",
            content=chunks(),
            headers={**guarded.as_writer(), "Content-Type": "application/json"},
        )
    except httpx.TransportError:
        # The server may close the connection before the client finishes sending: also a refusal.
        pass
    else:
        assert response.status_code == 413, response.text
    assert stored_keys(guarded, "big2") == []


def test_features_naming_one_group_2000_times_is_refused_at_once(guarded: Guarded) -> None:
    body = {"entity_ids": [f"u{i:06d}" for i in range(256)], "groups": ["features"] * 2000}
    with redis.Redis.from_url(guarded.redis.url) as inspector:
        inspector.config_resetstat()
        response = guarded.client.post("/features", json=body, headers=guarded.as_reader())
        commands = inspector.info("commandstats")
    assert response.status_code == 400, response.text
    assert "groups" in response.json()["error"]
    # Refused before any work: not one read reached Redis (a clock would say less, and flake).
    assert "cmdstat_hmget" not in commands, commands


def test_repeated_groups_are_resolved_once(guarded: Guarded) -> None:
    body = {"entity_ids": ["u000001"], "groups": ["embedding", "embedding"]}
    response = guarded.client.post("/features", json=body, headers=guarded.as_reader())
    assert response.status_code == 200, response.text
    assert list(response.json()["entities"][0]["groups"]) == ["embedding"]


@pytest.mark.parametrize("path", POST_PATHS)
@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/plain", b'{"entity_id": "u1", "amount": 1.0}'),
        ("multipart/form-data", b"--x\r\n\r\n"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="entity_id"\r\n\r\nu1\r\n--x--\r\n',
        ),
        ("application/x-www-form-urlencoded", b"entity_id=u1&amount=1"),
        ("application/vnd.bentoml+pickle", b"\x80\x04N."),
    ],
)
def test_bodies_that_are_not_json_get_415(
    guarded: Guarded, path: str, content_type: str, content: bytes
) -> None:
    response = guarded.client.post(
        path, content=content, headers={**guarded.as_writer(), "Content-Type": content_type}
    )
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"]


HUGE = "1" + "0" * 399
OV1 = '"entity_id": "ov1"'


@pytest.mark.parametrize(
    ("raw_update", "field"),
    [
        (f'{{{OV1}, "event_timestamp": {HUGE}, "values": {{"tx_count_1h": 1}}}}', "event_timestamp"),  # noqa: E501
        (f'{{{OV1}, "event_timestamp": 1, "values": {{"tx_sum_1h": {HUGE}}}}}', "tx_sum_1h"),
        (f'{{{OV1}, "event_timestamp": 1, "values": {{"tx_count_1h": {HUGE}}}}}', "tx_count_1h"),
        (
            '{"entity_id": "ov1", "group": "embedding", "event_timestamp": 1, '
            '"values": {"embedding": [1e39, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}}',
            "embedding",
        ),
    ],
)  # fmt: skip
def test_numeric_overflow_is_a_4xx_naming_the_field(
    guarded: Guarded, raw_update: str, field: str
) -> None:
    response = guarded.client.post(
        "/push",
        content=f'{{"updates": [{raw_update}]}}'.encode(),
        headers={**guarded.as_writer(), "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert field in response.text
    assert stored_keys(guarded, "ov1") == []


def test_overflowing_numbers_in_reads_are_a_400(guarded: Guarded) -> None:
    for body in (
        f'{{"entity_id": "u1", "amount": {HUGE}}}',
        f'{{"entity_id": "u1", "amount": 1.0, "timestamp": {HUGE}}}',
    ):
        response = guarded.client.post(
            "/score",
            content=body.encode(),
            headers={**guarded.as_reader(), "Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text


def test_invisible_characters_in_ids_are_refused(guarded: Guarded) -> None:
    response = guarded.client.post(
        "/score", json={"entity_id": "u000001\u202e", "amount": 1.0}, headers=guarded.as_reader()
    )
    assert response.status_code == 400
    assert "U+202E" in response.json()["error"]


# --- no internals out --------------------------------------------------------------------


def test_a_store_failure_on_push_is_a_503_without_the_store_error(guarded: Guarded) -> None:
    with redis.Redis.from_url(guarded.redis.url) as admin:
        admin.execute_command("ACL", "SETUSER", "default", "-evalsha", "-eval", "-script")
        try:
            response = push(guarded, update("fail1", tx_count_1h=1))
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "+@all")
    assert response.status_code == 503, response.text
    text = response.text.lower()
    assert "retrying is safe" in text
    for internal in ("permission", "evalsha", "127.0.0.1", str(guarded.redis.port)):
        assert internal not in text
    assert "no permissions to run the 'evalsha' command" in guarded.log_path.read_text()


# --- one rule for ids and for unknown keys; no encodings ----------------------------------


@pytest.mark.parametrize(
    "entity_id",
    ["u\u3164", "\u3164", "\ufe0f", "u\ufe0f", "\u0301", "\u0301u1", "a\u0000b", "\u202eevil"],
    ids=["hangul-filler", "filler-alone", "lone-fe0f", "fe0f", "lone-mark", "mark-first", "nul",
         "rlo"],
)  # fmt: skip
def test_invisible_ids_are_refused_as_entities_and_as_items(
    guarded: Guarded, entity_id: str
) -> None:
    scored = guarded.client.post(
        "/score", json={"entity_id": entity_id, "amount": 1.0}, headers=guarded.as_reader()
    )
    assert scored.status_code == 400, scored.text
    assert "entity_id" in scored.json()["error"]
    pushed = guarded.client.post(
        "/push",
        json={
            "updates": [
                {
                    "entity_id": "items1",
                    "group": "recent_items",
                    "event_timestamp": NOW,
                    "values": {"recent_items": ["i1", entity_id]},
                }
            ]
        },
        headers=guarded.as_writer(),
    )
    assert pushed.status_code == 422, pushed.text
    assert pushed.json()["refused"][0]["field"] == "recent_items"
    assert stored_keys(guarded, "items1") == []


@pytest.mark.parametrize(
    ("path", "body", "place"),
    [
        ("/score", {"entity_id": "u000001", "amount": 1.0, "amuont": 2.0}, "amuont"),
        ("/score_batch", {"requests": [], "extra": 1}, "extra"),
        ("/score_batch", {"requests": [{"entity_id": "u1", "amount": 1.0, "x": 1}]}, "x"),
        ("/features", {"entity_ids": ["u000001"], "group": ["features"]}, "group"),
        ("/push", {"updates": [update("uk1", tx_count_1h=1)], "dry_run": True}, "dry_run"),
        ("/push", {"updates": [{**update("uk1", tx_count_1h=1), "ttl": 5}]}, "ttl"),
    ],
)
def test_unknown_keys_are_refused_at_every_level(
    guarded: Guarded, path: str, body: dict[str, Any], place: str
) -> None:
    response = guarded.client.post(path, json=body, headers=guarded.as_writer())
    assert response.status_code == 400, response.text
    assert place in response.json()["error"]
    assert stored_keys(guarded, "uk1") == []


def test_an_unknown_feature_name_in_a_push_is_refused(guarded: Guarded) -> None:
    response = push(guarded, update("uk2", tx_count_1h=1, tx_count_1y=2))
    assert response.status_code == 422, response.text
    assert "tx_count_1y" in response.text
    assert stored_keys(guarded, "uk2") == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-gzip, identity"])
@pytest.mark.parametrize("path", POST_PATHS)
def test_compressed_bodies_get_415(guarded: Guarded, path: str, encoding: str) -> None:
    body = gzip.compress(json.dumps({"entity_id": "u000001", "amount": 1.0}).encode())
    response = guarded.client.post(
        path,
        content=body,
        headers={
            **guarded.as_writer(),
            "Content-Type": "application/json",
            "Content-Encoding": encoding,
        },
    )
    assert response.status_code == 415, response.text
    assert "Content-Encoding" in response.json()["error"]


# --- the API page calls no third party ----------------------------------------------------


class _Loads(html.parser.HTMLParser):
    """Every URL a page makes the browser load: scripts, styles, images, frames, icons."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        for attribute in ("src", "data", "poster", "srcset"):
            if named.get(attribute):
                self.urls.append(str(named[attribute]))
        if tag == "link" and named.get("href"):
            self.urls.append(str(named["href"]))
        self._in_script = tag == "script" and not named.get("src")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_scripts.append(data)


TRACKERS = ("googletagmanager", "google-analytics", "gtag(", "analytics.js")


def test_the_api_page_loads_nothing_from_another_origin(guarded: Guarded) -> None:
    page = guarded.client.get("/")
    assert page.status_code == 200
    loads = _Loads()
    loads.feed(page.text)
    assert loads.urls, "the page loads Swagger UI"
    for url in loads.urls:
        parts = urllib.parse.urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        served = guarded.client.get(urllib.parse.urljoin("/", url))
        assert served.status_code == 200, url
        if url.endswith(".js"):
            for tracker in TRACKERS:
                assert tracker not in served.text, (url, tracker)
    for tracker in TRACKERS:
        assert tracker not in page.text
    # Swagger UI's bundle defaults to an online validator whose badge is an image from
    # validator.swagger.io (carrying the spec's URL): the page's own start-up turns it off.
    assert "validatorUrl: null" in "".join(loads.inline_scripts)
    assert "validator.swagger.io" not in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "https:" not in policy and "*" not in policy
