"""Key layout and entity id validation."""

from __future__ import annotations

import re
import unicodedata

import pytest

from features.errors import InvalidEntityId
from features.keys import ENTITY_ID_PATTERN, feature_key, validate_entity_id


def test_key_puts_the_id_in_a_cluster_hash_tag() -> None:
    assert feature_key("user", "u000123", "features") == "user:{u000123}:features"


@pytest.mark.parametrize(
    "entity_id",
    ["u000123", "m-441_x.y", "a" * 128, "ünïcode", "x:y", "用户42", "ع١٢", "😀", "é" * 128],
)
def test_valid_ids_pass(entity_id: str) -> None:
    assert validate_entity_id(entity_id) == entity_id
    assert re.fullmatch(ENTITY_ID_PATTERN, entity_id)


@pytest.mark.parametrize(
    ("entity_id", "reason"),
    [
        ("", "empty"),
        ("a" * 129, "129 characters long, at most 128"),
        ("u 1", "whitespace"),
        ("u1\n", "whitespace"),
        ("u\t1", "whitespace"),
        ("u\x001", "control character"),
        ("u\x7f", "control character"),
        ("u{1}", "brace"),
        ("}", "brace"),
        (123, "must be a string"),
    ],
)
def test_bad_ids_are_refused_with_the_reason(entity_id: object, reason: str) -> None:
    with pytest.raises(InvalidEntityId, match=re.escape(reason)):
        validate_entity_id(entity_id)
    if isinstance(entity_id, str):
        assert not re.fullmatch(ENTITY_ID_PATTERN, entity_id)


@pytest.mark.parametrize(
    ("entity_id", "reason"),
    [
        ("u\x85", "whitespace (U+0085)"),  # NEL, a C1 control that is also a line break
        ("u\x9b1", "a control character (U+009B)"),  # CSI, the C1 escape of terminals
        ("u\x80", "a control character (U+0080)"),
        ("u\u00a0", "whitespace (U+00A0)"),  # no-break space
        ("u\u2028", "whitespace (U+2028)"),  # line separator
        ("admin\u202e", "an invisible format character (U+202E)"),  # right-to-left override
        ("u\u200b1", "an invisible format character (U+200B)"),  # zero-width space
        ("\ufeffu1", "an invisible format character (U+FEFF)"),  # byte order mark
        ("u\u00ad1", "an invisible format character (U+00AD)"),  # soft hyphen
        ("u\ue000", "not printable (U+E000, Unicode category Co)"),  # private use
        ("u\U000e0001", "an invisible format character (U+E0001)"),  # language tag
        ("u\ud800", "not printable (U+D800, Unicode category Cs)"),  # a lone surrogate
        ("e\u0301", "not in Unicode normal form NFC"),  # e + combining acute accent
        ("u\u3164", "an invisible character (U+3164"),  # HANGUL FILLER, a letter drawn blank
        ("\u3164", "an invisible character (U+3164"),
        ("\ufe0f", "an invisible character (U+FE0F"),  # a lone variation selector
        ("u\ufe0f", "an invisible character (U+FE0F"),
        ("u\u034f1", "an invisible character (U+034F"),  # combining grapheme joiner
        ("u\uffa0", "an invisible character (U+FFA0"),  # HALFWIDTH HANGUL FILLER
        ("\u0301", "starts with a combining mark (U+0301)"),  # a lone combining mark
        ("\u0301u1", "starts with a combining mark (U+0301)"),
        ("\u20dd", "starts with a combining mark (U+20DD)"),  # an enclosing mark, alone
    ],
)
def test_ids_outside_the_printable_nfc_alphabet_are_refused(entity_id: str, reason: str) -> None:
    with pytest.raises(InvalidEntityId, match=re.escape(reason)):
        validate_entity_id(entity_id)


def test_ids_that_look_the_same_are_one_id() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert unicodedata.normalize("NFC", decomposed) == composed
    assert validate_entity_id(composed) == composed
    with pytest.raises(InvalidEntityId):
        validate_entity_id(decomposed)
    with pytest.raises(InvalidEntityId):
        validate_entity_id("u1\u200b")  # "u1" followed by a zero-width space


def test_no_key_is_built_for_a_bad_id() -> None:
    with pytest.raises(InvalidEntityId):
        feature_key("user", "u}:evil:{x", "features")
