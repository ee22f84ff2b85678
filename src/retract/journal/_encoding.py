"""Turning payloads and contexts into JSON, with errors that point at the bad value.

Everything is checked and encoded before any side effect, so a bad value never leaves a
half-written record behind.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from .._errors import InvalidRecordError, NotSerializableError

__all__ = ("MAX_PAYLOAD_BYTES", "check_op_type", "decode", "encode", "new_id")

#: unmake's limit, kept: a journal row is not the place for bulk data.
MAX_PAYLOAD_BYTES = 10_000_000

_OP_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Operation types seen valid: most programs use a handful, checked once each.
_valid_types: set[str] = set()
_VALID_TYPES_CACHE = 4096
# The UUID variant nibble (binary 10xx) for each random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_IDS_PER_REFILL = 256
_ids: collections.deque[str] = collections.deque()
# A forked child must never hand out ids its parent also holds.
os.register_at_fork(after_in_child=_ids.clear)
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# The C scanner, without JSONDecoder.decode's whitespace regexes: our JSON is compact.
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def check_op_type(op_type: object) -> str:
    """Return ``op_type`` if it is a valid operation type, else raise.

    :raises InvalidRecordError: not a string of letters, digits, ``.``, ``_`` and ``-``.
    """
    if isinstance(op_type, str) and op_type in _valid_types:
        return op_type
    if not isinstance(op_type, str) or _OP_TYPE.fullmatch(op_type) is None:
        raise InvalidRecordError(
            f"invalid operation type {op_type!r}: use 1 to 200 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (e.g. 'fs.move')"
        )
    if len(_valid_types) < _VALID_TYPES_CACHE:
        _valid_types.add(op_type)
    return op_type


def new_id() -> str:
    """A random (version 4) UUID string, about four times as fast as ``str(uuid.uuid4())``.

    Ids are made a few hundred at a time from one ``os.urandom`` call and handed out
    from a deque, whose ``popleft`` is atomic, so two threads never get the same one.
    Besides the system call, this keeps the event loop from releasing the GIL on every
    record: each release wakes a thread waiting for the GIL (the SQLite writer, done
    with its commit) only for it to find the GIL taken again, which costs both sides.
    """
    while True:
        try:
            return _ids.popleft()
        except IndexError:
            _refill_ids()


def _refill_ids() -> None:
    h = os.urandom(16 * _IDS_PER_REFILL).hex()
    _ids.extend(
        [
            f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
            f"{_VARIANT[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
            for i in range(0, len(h), 32)
        ]
    )


def _default(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_dumps: Callable[[dict[str, Any]], str]
if c_make_encoder is not None:
    # json.JSONEncoder.encode builds this C encoder anew on every call; building it once
    # halves the cost of encoding a small payload. Without a markers dict it keeps no
    # state between calls (a cyclic value ends in RecursionError, as it did before).
    _c_encoder = c_make_encoder(
        None,  # markers
        _default,
        encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",
        ",",
        False,  # noqa: FBT003  sort_keys (the C API takes positional flags only)
        False,  # noqa: FBT003  skipkeys
        False,  # noqa: FBT003  allow_nan
    )

    def _dumps(value: dict[str, Any]) -> str:
        return "".join(_c_encoder(value, 0))

else:  # pragma: no cover - CPython always has the C accelerator
    _dumps = _encoder.encode


def encode(value: Mapping[str, Any], what: str, *, limit: int = MAX_PAYLOAD_BYTES) -> str:
    """Encode a payload or context mapping as compact JSON.

    Only values that read back equal are accepted: dicts with string keys, lists,
    tuples (read back as lists), strings, finite numbers, booleans and None.

    :param what: how to name the value in errors (``"payload"``, ``"context"``).
    :raises NotSerializableError: (a TypeError) naming the path of the first bad value.
    :raises InvalidRecordError: the encoded value is larger than ``limit`` bytes.
    """
    if type(value) is not dict:
        if not isinstance(value, Mapping):
            raise NotSerializableError(
                f"{what} must be a dict of JSON values, got {type(value).__name__}", what
            )
        value = dict(value)
    try:
        text = _dumps(value)
    except (TypeError, ValueError, RecursionError):
        # RecursionError: the C encoder keeps no markers (it is faster without), so a
        # value that contains itself, or is nested absurdly deep, ends up here.
        _raise_for_bad_value(value, what)
        raise  # pragma: no cover - _raise_for_bad_value always raises here
    if _has_foreign_key(value):
        _raise_for_bad_value(value, what)
    if len(text) > MAX_DEPTH and text.count("{") + text.count("[") > MAX_DEPTH:
        # Only a value with that many containers can be nested that deep. Newer Pythons
        # encode (and decode) deeper values than 3.11 can read back, so the limit is
        # checked whatever the encoder managed: a journal stays readable everywhere.
        _check_depth(value, what)
    if len(text) > limit:
        raise InvalidRecordError(
            f"{what} is {len(text)} bytes of JSON, over the limit of {limit}: store large "
            "data in a file and journal its path instead"
        )
    return text


def decode(text: str) -> Any:
    """Decode JSON written by :func:`encode`."""
    value, end = _scan_once(text, 0)
    if end != len(text):  # pragma: no cover - only for text not written by encode()
        return json.loads(text)
    return value


def _has_foreign_key(value: dict[Any, Any]) -> bool:
    """Whether a non-string key hides anywhere in ``value``.

    json.dumps silently turns int/float/bool/None keys into strings, which would not read
    back equal, so keys are checked separately (iteratively: this is on every record).
    A flat dict, the common payload, is settled by one pass over its items.
    """
    for key, child in value.items():
        if not isinstance(key, str):
            return True
        if isinstance(child, _CONTAINERS):
            break
    else:
        return False
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return True
                if isinstance(child, _CONTAINERS):
                    stack.append(child)
        else:
            stack.extend(child for child in item if isinstance(child, _CONTAINERS))
    return False


_CONTAINERS = (dict, list, tuple)


#: A payload the encoder cannot handle for its depth is reported past this depth.
MAX_DEPTH = 500


def _check_depth(value: Any, path: str) -> None:
    """Raise NotSerializableError if ``value`` nests more than MAX_DEPTH containers."""
    level: list[tuple[Any, str]] = [(value, path)]
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            where = level[0][1]
            raise NotSerializableError(
                f"{where} is nested more than {MAX_DEPTH} levels deep: flatten it before recording",
                where,
            )
        inner: list[tuple[Any, str]] = []
        for item, where in level:
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            inner += [
                (child, f"{where}[{key!r}]" if isinstance(item, dict) else f"{where}[{key}]")
                for key, child in pairs
                if isinstance(child, dict | list | tuple)
            ]
        level = inner
        depth += 1


def _raise_for_bad_value(value: Any, path: str, inside: tuple[int, ...] = ()) -> None:
    """Walk ``value`` and raise NotSerializableError at the first non-JSON value.

    :param inside: ids of the containers on the way here, to find a value inside itself.
    """
    if isinstance(value, dict | list | tuple):
        if id(value) in inside:
            raise NotSerializableError(
                f"{path} contains itself (a reference cycle), which JSON cannot represent: "
                "record a copy without the cycle",
                path,
            )
        if len(inside) >= MAX_DEPTH:
            raise NotSerializableError(
                f"{path} is nested more than {MAX_DEPTH} levels deep: flatten it before recording",
                path,
            )
        inside = (*inside, id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotSerializableError(
                    f"{path} has a key {key!r} of type {type(key).__name__}; JSON keys must "
                    "be strings: convert the key with str() before recording",
                    path,
                )
            _raise_for_bad_value(item, f"{path}[{key!r}]", inside)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _raise_for_bad_value(item, f"{path}[{index}]", inside)
    elif isinstance(value, float) and not math.isfinite(value):
        raise NotSerializableError(
            f"{path} is {value!r}, which JSON cannot represent: record a finite number, "
            "a string or None instead",
            path,
        )
    elif not isinstance(value, str | int | float | bool) and value is not None:
        raise NotSerializableError(
            f"{path} is of type {type(value).__name__}, which is not JSON-serialisable: "
            "convert it to a string, number, list or dict before recording",
            path,
        )
