"""Feature dtypes: how a declared type checks, stores and reads back its values.

Each dtype turns a Python value into its canonical immutable form
(``normalize``), into the bytes Redis keeps (``encode``), and turns Redis'
bytes back into a value (``decode``).  Hash values are plain decimal
strings, so anything that can write ``HSET key field 12.5`` is a valid
writer.  ``decode`` raises ``ValueError`` on bytes that are not a valid
value; the caller decides what to do (the resolver falls back to defaults).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

__all__ = ["DTYPES", "INT64_MAX", "INT64_MIN", "Dtype", "shown_value"]

_SHOWN_CHARACTERS = 60


class Dtype(Protocol):
    """What a dtype must do; see the module docstring."""

    name: str

    def normalize(self, value: Any, dim: int | None) -> Any:
        """The canonical immutable form of ``value``; ``TypeError``/``ValueError`` if invalid."""
        ...

    def encode(self, value: Any) -> bytes | Sequence[bytes]:
        """The bytes stored in Redis for a normalized value."""
        ...

    def decode(self, raw: Any, dim: int | None) -> Any:
        """The value for what Redis returned; ``ValueError`` if it is not valid."""
        ...


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of an ``int`` feature: the model's inputs are built from int64 columns."""


def _within_int64(value: int) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"an integer of {value.bit_length()} bits does not fit in 64 bits")
    return value


def shown_value(value: Any) -> str:
    """A short ``repr`` of ``value`` for an error message, whatever its size.

    Python refuses to print an int of more than 4,300 digits (``repr`` raises
    ``ValueError``), and a megabyte-long string would flood the message.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    if len(text) > _SHOWN_CHARACTERS:
        return f"{text[:_SHOWN_CHARACTERS]}... ({len(text)} characters)"
    return text


class _Int:
    name = "int"

    def normalize(self, value: Any, dim: int | None) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"expected an int, got {type(value).__name__}")
        return _within_int64(value)

    def encode(self, value: int) -> bytes:
        return b"%d" % value

    def decode(self, raw: bytes, dim: int | None) -> int:
        try:
            return _within_int64(int(raw))
        except ValueError:
            # Writers that format every number as a float ("3.0") are still read.
            as_float = float(raw)
            if not as_float.is_integer():
                raise ValueError(f"{raw!r} is not an integer") from None
            return _within_int64(int(as_float))


class _Float:
    name = "float"

    def normalize(self, value: Any, dim: int | None) -> float:
        if not _is_number(value):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        try:
            result = float(value)
        except OverflowError:
            raise ValueError(f"an integer of {value.bit_length()} bits is too large") from None
        if not math.isfinite(result):
            raise ValueError(f"{value!r} is not finite")
        return result

    def encode(self, value: float) -> bytes:
        return repr(value).encode()

    def decode(self, raw: bytes, dim: int | None) -> float:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(f"{raw!r} is not finite")
        return value


class _StrList:
    name = "str_list"

    def normalize(self, value: Any, dim: int | None) -> tuple[str, ...]:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise TypeError(f"expected a sequence of str, got {type(value).__name__}")
        if not all(isinstance(item, str) for item in value):
            raise TypeError("every item must be a str")
        if dim is not None and len(value) > dim:
            raise ValueError(f"holds {len(value)} items, at most {dim} allowed")
        return tuple(value)

    def encode(self, value: tuple[str, ...]) -> Sequence[bytes]:
        return [item.encode() for item in value]

    def decode(self, raw: Sequence[bytes], dim: int | None) -> tuple[str, ...]:
        return tuple(item.decode() for item in raw)


_FLOAT32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]


def _fits_float32(number: float) -> bool:
    """Whether ``struct`` packs ``number`` as a float32 (which raises ``OverflowError`` past
    the largest float32, also for a value that would round down to it; an int too large for
    a float64 fails before that)."""
    try:
        struct.pack("<f", float(number))
    except OverflowError:
        return False
    return math.isfinite(number)


class _Float32Vector:
    name = "float32_vector"

    def normalize(self, value: Any, dim: int | None) -> tuple[float, ...]:
        if dim is None:
            raise ValueError("a float32_vector needs dim")
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise TypeError(f"expected a sequence of {dim} numbers, got {type(value).__name__}")
        if len(value) != dim:
            raise ValueError(f"expected {dim} values, got {len(value)}")
        if not all(_is_number(item) and _fits_float32(item) for item in value):
            raise ValueError(
                f"every value must be a finite number within +-{_FLOAT32_MAX:.4g} (float32)"
            )
        # Round through float32 so a value reads back exactly as it was normalized.
        return struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *value))

    def encode(self, value: tuple[float, ...]) -> bytes:
        return struct.pack(f"<{len(value)}f", *value)

    def decode(self, raw: bytes, dim: int | None) -> tuple[float, ...]:
        if dim is None or len(raw) != 4 * dim:
            raise ValueError(f"expected {dim} float32 values, got {len(raw)} bytes")
        return struct.unpack(f"<{dim}f", raw)


DTYPES: Mapping[str, Dtype] = MappingProxyType(
    {dtype.name: dtype for dtype in (_Int(), _Float(), _StrList(), _Float32Vector())}
)
"""Every dtype a feature may declare, by name."""
