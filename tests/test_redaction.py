"""Credentials in URLs never reach a log line, an error or a CLI echo."""

from __future__ import annotations

import logging

import pytest

from features.redaction import MASK, install_log_redaction, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://reader:s3cret@host:6379/0", f"redis://reader:{MASK}@host:6379/0"),
        ("rediss://:s3cret@host:6380", f"rediss://:{MASK}@host:6380"),
        ("redis://s3cret@host", f"redis://{MASK}@host"),
        (
            "Error connecting to redis://u:p%40ss@10.0.0.1:6379: refused",
            f"Error connecting to redis://u:{MASK}@10.0.0.1:6379: refused",
        ),
        ("redis://host:6379/0?password=s3cret&db=1", f"redis://host:6379/0?password={MASK}&db=1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("no url at all: a=b", "no url at all: a=b"),
        (
            "two: redis://a:x@h1 and http://b:y@h2/path",
            f"two: redis://a:{MASK}@h1 and http://b:{MASK}@h2/path",
        ),
    ],
)
def test_redact_masks_passwords_and_keeps_the_rest(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_every_log_record_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    install_log_redaction()  # idempotent: one wrapper, not two
    logger = logging.getLogger("tests.redaction")
    with caplog.at_level(logging.INFO, logger="tests.redaction"):
        logger.info("connecting to %s", "redis://app:hunter22@cache:6379")
        try:
            raise ConnectionError("refused by rediss://app:hunter22@cache:6380")
        except ConnectionError:
            logger.exception("store down")
    assert "hunter22" not in caplog.text
    assert f"redis://app:{MASK}@cache:6379" in caplog.text
    assert f"rediss://app:{MASK}@cache:6380" in caplog.text


def test_a_message_that_does_not_format_is_left_to_the_handler() -> None:
    install_log_redaction()
    make_record = logging.getLogRecordFactory()
    record = make_record("tests", logging.INFO, __file__, 1, "%d requests", ("many",), None)
    assert (record.msg, record.args) == ("%d requests", ("many",))
