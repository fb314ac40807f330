"""Keeping credentials out of logs, errors and anything else a person reads.

``redis://user:secret@host:6379/0`` carries a password, and so may any
other URL a setting holds (``?password=...`` in the query works for
redis-py too).  ``redact`` masks both wherever a URL appears in a text;
``install_log_redaction`` makes every log record of the process go through
it, whichever logger, handler or library writes it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["MASK", "install_log_redaction", "redact"]

MASK = "***"
"""What a credential is replaced with."""

# scheme://[user:]password@ ; the user part is kept, since it says which ACL user was used.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/@]+)@")
_SECRET_PARAMETER = re.compile(r"(?P<name>[?&](?:password|passwd|pass|token|secret)=)[^&\s]+")


def _masked_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    kept = f"{user}:" if colon else ""
    return f"{match['scheme']}{kept}{MASK}@"


def redact(text: str) -> str:
    """``text`` with the password (or lone secret) of every URL in it replaced by ``MASK``."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(_masked_userinfo, text)
    return _SECRET_PARAMETER.sub(rf"\g<name>{MASK}", text)


def install_log_redaction() -> None:
    """Redact the message and traceback of every log record this process creates; idempotent.

    It wraps the log record factory rather than adding a filter to handlers,
    since BentoML and uvicorn configure their handlers after our code is
    imported, and a filter on a logger misses records of its children.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            # A message that does not format is the handler's to report (logging.raiseExceptions),
            # never an error at the call site.
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters print exc_text when it is set, so the traceback is redacted too.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    redacting_factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
