"""Request-body JSON parsing: fast path, the standard library's extras, clear errors."""

from __future__ import annotations

import json
import math

import pytest

from service.errors import BadRequest
from service.uploads import parse_json


def test_parses_what_the_standard_library_parses() -> None:
    doc = {"site": "lab", "csi": [[[0.25, -1e-7], [3.0, 4]]], "n": 2**70}
    assert parse_json(json.dumps(doc).encode()) == doc  # big ints: the fallback
    nan = parse_json(b'{"csi": [NaN, Infinity, -Infinity]}')["csi"]
    assert math.isnan(nan[0]) and nan[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize("body", [b"{", b"", b'{"a": 1,}', b"\xff\xfe"])
def test_invalid_json_is_a_400_that_names_the_part(body: bytes) -> None:
    with pytest.raises(BadRequest) as err:
        parse_json(body, "inference request header")
    assert err.value.message == "inference request header is not valid JSON"
    assert err.value.detail["reason"]
