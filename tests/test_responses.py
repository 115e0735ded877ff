"""The API's JSON response renders what Starlette's would, byte for byte."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import JSONResponse as StarletteJSONResponse

from ledger.api.responses import JSONResponse

# What the API puts in a body: dicts of str keys, lists, str (any Unicode), int of any size
# (fen, 128-bit ids as int, nanosecond timestamps), bool and None.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_the_bytes_are_starlettes(content: Any) -> None:
    assert JSONResponse(content).body == StarletteJSONResponse(content).body


def test_a_receipt_sized_answer_round_trips() -> None:
    item = {
        "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "result": "ok",
        "replayed": False,
        "seq": 123_456,
        "receipt": {"inclusion_proof": ["qg==" * 11] * 17, "note": "ecny.example/ledger\n— é\n"},
    }
    response = JSONResponse(item)
    assert json.loads(response.body) == item
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.body)


def test_a_float_that_is_not_a_number_is_sent_as_null_not_as_invalid_json() -> None:
    body = JSONResponse({"score": float("nan"), "cap": float("inf"), "p": 0.25}).body
    assert json.loads(body) == {"score": None, "cap": None, "p": 0.25}


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=10))
def test_floats_come_back_as_the_same_numbers(values: list[float]) -> None:
    assert json.loads(JSONResponse({"v": values}).body) == {"v": values}
