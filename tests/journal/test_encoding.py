"""Payloads, contexts and operation types: bad input is refused before any side effect."""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retract import (
    InvalidRecordError,
    Journal,
    NotSerializableError,
    open_journal,
)
from retract.journal._encoding import (
    MAX_DEPTH,
    MAX_PAYLOAD_BYTES,
    check_op_type,
    decode,
    encode,
    new_id,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_plain_json_round_trips_exactly(payload: dict[str, Any]) -> None:
    """Anything made of JSON types reads back equal."""
    assert decode(encode(payload, "payload")) == payload


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"when": object()}, "payload['when']"),
        ({"files": ["a", {1, 2}]}, "payload['files'][1]"),
        ({"nested": {"deep": [1, 2, b"raw"]}}, "payload['nested']['deep'][2]"),
        ({"ratio": math.nan}, "payload['ratio']"),
        ({"limit": math.inf}, "payload['limit']"),
        ({"by_id": {1: "a"}}, "payload['by_id']"),
        ({3: "top-level int key"}, "payload"),
    ],
)
def test_bad_values_are_type_errors_naming_the_path(payload: dict[Any, Any], path: str) -> None:
    """A value JSON cannot hold exactly raises a TypeError that points at it."""
    with pytest.raises(NotSerializableError) as caught:
        encode(payload, "payload")
    assert isinstance(caught.value, TypeError)
    assert caught.value.path == path
    assert path in str(caught.value)


def test_value_containing_itself_is_refused_naming_where() -> None:
    """A reference cycle is a NotSerializableError at the repeated container."""
    payload: dict[str, Any] = {"items": [1]}
    payload["items"].append(payload)
    with pytest.raises(NotSerializableError, match="contains itself") as caught:
        encode(payload, "payload")
    assert caught.value.path == "payload['items'][1]"


def test_absurdly_deep_nesting_is_refused() -> None:
    """A value nested thousands of levels deep is refused, not a RecursionError."""
    payload: dict[str, Any] = {}
    level = payload
    for _ in range(5000):
        level["k"] = {}
        level = level["k"]
    with pytest.raises(NotSerializableError, match="nested more than"):
        encode(payload, "payload")


def test_non_mapping_payload_is_refused() -> None:
    """A payload must be a dict."""
    with pytest.raises(NotSerializableError, match="must be a dict"):
        encode(["not", "a", "dict"], "payload")  # type: ignore[arg-type]


def test_other_mappings_are_accepted() -> None:
    """Any Mapping with string keys is fine at the top level."""
    assert decode(encode(OrderedDict(b=1, a=2), "context")) == {"b": 1, "a": 2}


def test_tuples_read_back_as_lists() -> None:
    """Tuples are JSON arrays: they come back as lists (documented)."""
    assert decode(encode({"pair": (1, 2)}, "payload")) == {"pair": [1, 2]}


def test_oversized_payload_is_refused_with_advice() -> None:
    """A payload above the size limit is refused and the error says what to do instead."""
    with pytest.raises(InvalidRecordError, match="journal its path instead"):
        encode({"blob": "x" * (MAX_PAYLOAD_BYTES + 1)}, "payload")


@pytest.mark.parametrize("op_type", ["", "has space", "-leading", "x" * 201, "semi;colon", 7])
def test_bad_operation_types_are_refused(op_type: object) -> None:
    """Operation types are short dotted names; anything else is a clear ValueError."""
    with pytest.raises(InvalidRecordError, match="invalid operation type") as caught:
        check_op_type(op_type)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("op_type", ["fs.move", "a", "mail-send_v2.retry", "A9"])
def test_good_operation_types_pass(op_type: str) -> None:
    """Letters, digits, dots, dashes and underscores are fine."""
    assert check_op_type(op_type) == op_type


def test_new_ids_are_version_4_uuids() -> None:
    """Generated ids are valid random UUIDs and do not repeat."""
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in list(ids)[:200]:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, value)


async def test_bad_payload_writes_nothing(journal: Journal) -> None:
    """A refused payload leaves the session without a half-written operation."""
    async with journal.start_session() as session:
        with pytest.raises(TypeError, match=r"payload\['when'\]"):
            await session.record_operation("a.b", {"when": object()})
        with pytest.raises(TypeError):
            session.step("a.b", {"bad": {1, 2}})
        with pytest.raises(ValueError, match="invalid operation type"):
            await session.record_operation("bad type", {})
        with pytest.raises(TypeError):
            await session.record_operations([("a.b", {"ok": 1}), ("a.b", {"bad": object()})])
    assert await journal.get_operations(session.session_id) == []


async def test_step_update_with_bad_value_keeps_the_old_payload(journal: Journal) -> None:
    """A refused step.update() leaves the payload as it was."""
    async with journal.start_session() as session, session.step("a.b", {"x": 1}) as step:
        with pytest.raises(TypeError, match=r"payload\['y'\]"):
            step.update(y=object())
    (op,) = await journal.get_operations(session.session_id)
    assert op.payload == {"x": 1}


async def test_bad_context_is_refused_before_the_session_starts() -> None:
    """start_session with a non-JSON context raises at once; no session is written."""
    async with open_journal(":memory:") as journal:
        with pytest.raises(NotSerializableError, match=r"context\['when'\]"):
            journal.start_session(when=object())
        assert await journal.list_sessions() == []


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """Exactly MAX_DEPTH nested containers encode; one more is refused on every Python."""

    def nested(depth: int) -> dict[str, Any]:
        payload: dict[str, Any] = {"leaf": 1}
        for _ in range(depth - 1):
            payload = {"k": payload}
        return payload

    assert encode(nested(MAX_DEPTH), "payload")
    with pytest.raises(NotSerializableError, match="nested more than"):
        encode(nested(MAX_DEPTH + 1), "payload")
