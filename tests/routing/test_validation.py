"""Unit tests for routing.validation: what a chat request body must look like before a model is chosen."""

import pytest

from routing.errors import InvalidRequest
from routing.validation import validate_body

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_minimal_body_is_valid():
    validate_body(OK)
    validate_body({**OK, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    validate_body({**OK, "messages": [{"role": "assistant", "content": None, "tool_calls": []}]})


@pytest.mark.parametrize(
    "body, param",
    [
        ([], None),
        ({**OK, "model": ""}, "model"),
        ({**OK, "model": 3}, "model"),
        ({**OK, "messages": []}, "messages"),
        ({**OK, "messages": ["hi"]}, "messages[0]"),
        ({**OK, "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({**OK, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**OK, "stream": 1}, "stream"),
        ({**OK, "stream_options": "yes"}, "stream_options"),
        ({**OK, "user": 7}, "user"),
        ({**OK, "base_url": "x"}, "base_url"),
        ({**OK, "tools": [{"function": {"api_key": "x"}}]}, "tools[0].function.api_key"),
    ],
)
def test_bad_bodies_name_the_offending_parameter(body, param):
    with pytest.raises(InvalidRequest) as exc:
        validate_body(body)
    assert exc.value.param == param
    assert exc.value.status_code == 400


def test_absurd_nesting_is_refused_not_crashed():
    deep = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(InvalidRequest, match="nested"):
        validate_body({**OK, "metadata": deep})


def test_a_role_that_is_not_a_string_is_a_bad_request_not_a_crash():
    for role in (["user"], {"a": 1}, 5, None):
        with pytest.raises(InvalidRequest) as exc:
            validate_body({**OK, "messages": [{"role": role, "content": "hi"}]})
        assert exc.value.param == "messages[0].role"
