"""What `make serve` prints once the service is ready."""

from __future__ import annotations

import secrets

from pydantic import SecretStr

from features.settings import Settings
from service.cli.demo import ready_message
from service.harness.example import EXAMPLE

URL = "http://127.0.0.1:3000"
TOKEN_A, TOKEN_B = secrets.token_urlsafe(24), secrets.token_urlsafe(24)


def test_a_token_made_for_the_run_is_printed_in_the_curls() -> None:
    token = secrets.token_urlsafe(24)
    message = ready_message(
        URL, Settings(write_token=SecretStr(token)), token_was_set=False, project=EXAMPLE
    )
    assert f"export FEATSERVE_WRITE_TOKEN={token}" in message
    assert f"curl -s -X POST {URL}/push" in message
    assert '-H "Authorization: Bearer $FEATSERVE_WRITE_TOKEN"' in message
    assert f'curl -s {URL}/ops/status -H "Authorization: Bearer $FEATSERVE_WRITE_TOKEN"' in message


def test_a_token_of_the_users_own_is_never_echoed() -> None:
    token = secrets.token_urlsafe(24)
    message = ready_message(
        URL, Settings(write_token=SecretStr(token)), token_was_set=True, project=EXAMPLE
    )
    assert token not in message
    assert "$FEATSERVE_WRITE_TOKEN" in message


def test_the_score_curl_carries_the_read_token_when_there_is_one() -> None:
    settings = Settings(write_token=SecretStr(TOKEN_A), read_token=SecretStr(TOKEN_B))
    message = ready_message(URL, settings, token_was_set=True, project=EXAMPLE)
    [score_line] = [line for line in message.splitlines() if f"{URL}/score" in line]
    assert '-H "Authorization: Bearer $FEATSERVE_READ_TOKEN"' in score_line


def test_the_curls_carry_the_projects_own_fields() -> None:
    message = ready_message(URL, Settings(write_token=SecretStr(TOKEN_A)), True, EXAMPLE)
    assert """-d '{"entity_id": "u000123", "amount": 250.0}'""" in message
    assert '"group": "features"' in message
    assert '"values": {"tx_count_1h": 0}' in message
