"""signing.strictjson: what strict JSON accepts and refuses, and that nothing else escapes."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signing.errors import StrictJSONError
from signing.strictjson import MAX_DEPTH, dumps_canonical, loads_strict

CAP = 8192  # bytes


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{}", {}),
        (b"[]", []),
        (b'{"a":1,"b":[true,false,null,"x"]}', {"a": 1, "b": [True, False, None, "x"]}),
        (b' { "a" : -5 } ', {"a": -5}),
        (b'"\\u00e9"', "é"),
        ('"é"'.encode(), "é"),
        (b'"\\ud83d\\ude00"', "\U0001f600"),  # a surrogate *pair* is one valid character
        (str(2**63 - 1).encode(), 2**63 - 1),
        (str(-(2**63)).encode(), -(2**63)),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, "nested"),
    ],
    ids=["empty-object", "empty-list", "mixed", "whitespace", "escape", "utf8", "pair",
         "max-int", "min-int", "max-depth"],
)
def test_accepts(data: bytes, expected: Any) -> None:
    if expected == "nested":
        expected = []
        for _ in range(MAX_DEPTH - 1):
            expected = [expected]
    assert loads_strict(data, CAP) == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"a":{"b":1,"b":1}}', "duplicate key"),
        (b"1.0", "non-integer"),
        (b"1e3", "non-integer"),
        (b"-0.0", "non-integer"),
        (b"NaN", "NaN"),
        (b"Infinity", "Infinity"),
        (b"-Infinity", "Infinity"),
        (str(2**63).encode(), "64-bit"),
        (str(-(2**63) - 1).encode(), "64-bit"),
        (b"9" * 5000, "not valid JSON"),  # Python's int digit limit, not a crash
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b'"\xff"', "UTF-8"),
        (b'"\xed\xa0\x80"', "UTF-8"),  # an encoded surrogate is not UTF-8
        (b'"\\ud800"', "surrogate"),
        (b'{"\\udc00":1}', "surrogate"),
        (b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2), "nesting"),
        (b"[" * 8000, "nesting"),
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"{} {}", "not valid JSON"),
        (b"{'a':1}", "not valid JSON"),
        (b'"a\x01b"', "not valid JSON"),  # raw control character in a string
        (b"x" * (CAP + 1), "over the limit"),
    ],
    ids=lambda v: v[:24].decode("latin-1") if isinstance(v, bytes) else None,
)
def test_refuses(data: bytes, fragment: str) -> None:
    with pytest.raises(StrictJSONError) as info:
        loads_strict(data, CAP)
    assert info.type is StrictJSONError
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": [1, "x"]}, b'{"a":[1,"x"],"b":1}'),
        ({"é": "ü"}, '{"é":"ü"}'.encode()),
        ([], b"[]"),
        ("\U0001f600", '"\U0001f600"'.encode()),
    ],
)
def test_dumps_canonical(value: Any, expected: bytes) -> None:
    out = dumps_canonical(value)
    assert out == expected
    assert loads_strict(out, CAP) == value


@pytest.mark.parametrize(
    "value",
    [1.5, float("nan"), {"a": 1.0}, {1: "int key"}, "\ud800", {"\udc00": 1}, b"bytes",
     2**64, {"a": object()}],
    ids=["float", "nan", "nested-float", "int-key", "surrogate", "surrogate-key", "bytes",
         "big-int", "object"],
)
def test_dumps_refuses(value: Any) -> None:
    with pytest.raises(StrictJSONError):
        dumps_canonical(value)


def test_surrogate_error_does_not_quote_the_string() -> None:
    with pytest.raises(StrictJSONError) as info:
        dumps_canonical({"value": "s3cret-\ud800"})
    assert "s3cret" not in str(info.value)


# --- fuzzing: fixed seed, bounded examples ---------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_only_strict_json_errors(data: bytes) -> None:
    with contextlib.suppress(StrictJSONError):
        loads_strict(data, CAP)


@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(st.text(alphabet='{}[]",:0123456789-.eE \\ud tfalsenu\x00é', max_size=80))
def test_fuzz_json_like_text_only_strict_json_errors(text: str) -> None:
    try:
        value = loads_strict(text.encode("utf-8", errors="surrogatepass"), CAP)
    except StrictJSONError:
        return
    # Whatever was accepted can be written canonically and read back unchanged.
    assert loads_strict(dumps_canonical(value), CAP) == value


@settings(derandomize=True, max_examples=200, deadline=None, database=None)
@given(json_values)
def test_fuzz_canonical_round_trip(value: Any) -> None:
    out = dumps_canonical(value)
    assert loads_strict(out, 1 << 20) == value
    assert dumps_canonical(loads_strict(out, 1 << 20)) == out


# --- the fast paths of loads_strict (nesting pre-scan, checks skipped when not needed) ------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # More brackets than MAX_DEPTH, all inside strings: the scan skips strings.
        ('{"a":"' + "[" * 100 + '"}', {"a": "[" * 100}),
        # An escaped quote does not end the string the brackets are in.
        ('["\\"' + "{" * 40 + '"]', ['"' + "{" * 40]),
        # A backslash before the closing quote is itself escaped.
        ('["\\\\", ' + "[" * 20 + "]" * 20 + ', "' + "[" * 20 + '"]',
         ["\\", [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]], "[" * 20]),
        # Many brackets side by side, never deep.
        ("[" + ",".join(["[]"] * 200) + "]", [[]] * 200),
        # MAX_DEPTH + 1 brackets, the innermost empty: its value is at depth MAX_DEPTH.
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested"),
        # Looks like a surrogate escape but is an escaped backslash and text.
        ('"\\\\ud800"', "\\ud800"),
        ('{"a":[-9223372036854775808, 9223372036854775807]}',
         {"a": [-(2**63), 2**63 - 1]}),
    ],
    ids=["brackets-in-string", "escaped-quote", "escaped-backslash", "wide", "depth-33-empty",
         "not-a-surrogate", "int-limits"],
)
def test_accepts_fast_paths(data: str, expected: Any) -> None:
    if expected == "nested":
        expected = []
        for _ in range(MAX_DEPTH):
            expected = [expected]
    assert loads_strict(data.encode(), CAP) == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("[" * (MAX_DEPTH + 1) + "1" + "]" * (MAX_DEPTH + 1), "nesting"),
        ('{"k":"' + "[" * 40 + '"}' + "[" * (MAX_DEPTH + 2), "nesting"),
        ('{"a":{"b":[9223372036854775808]}}', "64-bit"),
        ('[1,[2,[-9223372036854775809]]]', "64-bit"),
        ('{"x":[{"k":1,"j":2,"k":3}]}', "duplicate key 'k'"),
        ('["ok", {"deep":["\\udfff"]}]', "surrogate"),
        ('{"a":1,"b":' + "[" * 20 + '"\\ud800"' + "]" * 20 + "}", "surrogate"),
    ],
    ids=["depth-33-scalar", "deep-after-string", "big-int-nested", "small-int-nested",
         "duplicate-nested", "surrogate-nested", "surrogate-deep"],
)
def test_refuses_fast_paths(data: str, fragment: str) -> None:
    with pytest.raises(StrictJSONError) as info:
        loads_strict(data.encode(), CAP)
    assert fragment in str(info.value)


def test_one_decoder_for_every_call_keeps_nothing_between_calls() -> None:
    """loads_strict parses with one decoder made at import: a document refused halfway —
    by a hook (duplicate key, float, constant, integer range) or by the parser — leaves
    nothing behind that changes how the next one parses, and the next is refused as alone."""
    refused = [b'{"a":{"b":1,"b":2}}', b'{"a":[1,2.5]}', b'{"a":NaN}', b'[1,' + b"9" * 20 + b"]",
               b'{"a":1', b'{"a":1} x']
    for data in refused:
        with pytest.raises(StrictJSONError):
            loads_strict(data, CAP)
        assert loads_strict(b'{"b":[1,{"c":"d"}],"a":-3}', CAP) == {"a": -3,
                                                                    "b": [1, {"c": "d"}]}
    for data in refused:
        with pytest.raises(StrictJSONError):
            loads_strict(data, CAP)
