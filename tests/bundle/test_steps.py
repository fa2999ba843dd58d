"""Step schema (docs/release-format.md §3): normalize_step, validate_step, durations."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle.errors import ReleaseFormatError
from bundle.steps import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    normalize_step,
    parse_duration,
    referenced_files,
    secret_env_name,
    validate_step,
)

FILES = {"sql/001_schema.sql", "k8s/ns.yaml", "k8s/app.yaml", "scripts/smoke.sh", "x.py"}

SQL = {
    "name": "create schema",
    "kind": "sql",
    "engine": "postgres",
    "connection": "billing-db",
    "script": "sql/001_schema.sql",
}
K8S = {
    "name": "roll out",
    "kind": "k8s",
    "connection": "plant-cluster",
    "manifests": ["k8s/ns.yaml", "k8s/app.yaml"],
}
SHELL = {"name": "smoke test", "kind": "shell", "script": "scripts/smoke.sh"}
COMMON_DEFAULTS = {"timeout_s": DEFAULT_TIMEOUT_S, "on_failure": "stop", "secrets": []}

DELETE = object()


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DELETE:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# --- good steps: raw -> normalized ---

GOOD = [
    pytest.param(SQL, {**SQL, **COMMON_DEFAULTS}, id="sql-minimal"),
    pytest.param(
        with_(SQL, engine="mysql", version="2.4.0-001", description="tables\nand more",
              timeout="5m", on_failure="continue", secrets=["db_admin"]),
        {**SQL, "engine": "mysql", "version": "2.4.0-001", "description": "tables\nand more",
         "timeout_s": 300, "on_failure": "continue", "secrets": ["db_admin"]},
        id="sql-full",
    ),
    pytest.param(K8S, {**K8S, **COMMON_DEFAULTS, "wait": False}, id="k8s-minimal"),
    pytest.param(
        with_(K8S, namespace="billing", wait=True, wait_timeout="8m", timeout="1h"),
        {**K8S, "timeout_s": 3600, "on_failure": "stop", "secrets": [], "namespace": "billing",
         "wait": True, "wait_timeout_s": 480},
        id="k8s-full",
    ),
    pytest.param(
        SHELL,
        {**SHELL, **COMMON_DEFAULTS, "interpreter": "bash", "env": {}, "secrets_via": "env",
         "args": []},
        id="shell-minimal",
    ),
    pytest.param(
        with_(SHELL, script="x.py", interpreter="python", env={"B": "2", "A": "1"},
              secrets=["api-token"], secrets_via="stdin", args=["--flag", "", "two words"],
              timeout=90),
        {**SHELL, "script": "x.py", "interpreter": "python", "env": {"A": "1", "B": "2"},
         "secrets": ["api-token"], "secrets_via": "stdin", "args": ["--flag", "", "two words"],
         "timeout_s": 90, "on_failure": "stop"},
        id="shell-full",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_normalize_good_steps(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(raw)
    assert normalize_step(raw, 0, FILES) == expected
    assert raw == before  # the input is not changed


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_normalized_steps_validate_and_are_stable(
    raw: dict[str, Any], expected: dict[str, Any]
) -> None:
    normalized = normalize_step(raw, 3, FILES)
    validate_step(normalized)
    validate_step(normalized, index=3)
    # Normalizing is idempotent in effect: a normalized step's optional keys stay omitted.
    assert set(normalized) == set(expected)


# --- durations ---


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1, 1),
        (300, 300),
        ("90s", 90),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2m30s", 150),
        ("1h0m1s", 3601),
        ("24h", MAX_TIMEOUT_S),
        (MAX_TIMEOUT_S, MAX_TIMEOUT_S),
    ],
)
def test_parse_duration(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5x", "is not a duration"),
        ("300", 'did you mean "300s"'),
        ("", "is not a duration"),
        ("5 m", "is not a duration"),
        ("m5", "is not a duration"),
        ("30m1h", "is not a duration"),
        ("-5m", "is not a duration"),
        ("1.5h", "is not a duration"),
        ("0s", "between 1 second and 24h"),
        ("24h1s", "between 1 second and 24h"),
        ("25h", "between 1 second and 24h"),
        (0, "between 1 second and 24h"),
        (-1, "between 1 second and 24h"),
        (10**30, "between 1 second and 24h"),
        (True, "not a boolean"),
        (1.5, "not a number"),
        (None, "not NoneType"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert message in str(info.value)


# --- every rule of normalize_step, as a table: (raw step, words the message must hold) ---

BAD: list[Any] = [
    # name
    (with_(SQL, name=DELETE), ["step 4 (unnamed)", "field name", "is missing"]),
    (with_(SQL, name=""), ["field name", "must not be empty"]),
    (with_(SQL, name="  "), ["field name", "must not be empty"]),
    (with_(SQL, name=" padded"), ["field name", "white space"]),
    (with_(SQL, name="two\nlines"), ["field name", "U+000A"]),
    (with_(SQL, name="x" * 101), ["field name", "limit is 100"]),
    (with_(SQL, name=7), ["field name", "must be a string, not an integer"]),
    # kind
    (with_(SQL, kind=DELETE), ["step 4 ('create schema')", "field kind", "is missing"]),
    (with_(SQL, kind="shel"), ["field kind", "'shel' is not one of", "did you mean 'shell'?"]),
    (with_(SQL, kind="helm"), ["field kind", "'helm' is not one of 'sql', 'k8s', 'shell'"]),
    (with_(SQL, kind=["sql"]), ["field kind", "is not one of"]),
    # unknown keys, with hints
    (with_(SQL, on_faliure="stop"), ["'on_faliure' is not a known field of a sql step",
                                     "did you mean 'on_failure'?"]),
    (with_(SQL, timeout_s=5), ["'timeout_s' is not a known field", "did you mean 'timeout'?"]),
    (with_(SQL, manifests=["k8s/ns.yaml"]), ["'manifests' is a field of k8s steps",
                                             "not of sql steps"]),
    (with_(K8S, script="x.py"), ["'script' is a field of sql, shell and undo steps"]),
    (with_(SHELL, totally_unknown=1), ["'totally_unknown' is not a known field of a shell"]),
    # timeout and on_failure
    (with_(SQL, timeout="5x"), ["step 4 ('create schema'), field timeout", "'5x'",
                                "is not a duration"]),
    (with_(SQL, timeout="300"), ["field timeout", 'did you mean "300s"']),
    (with_(SQL, timeout="48h"), ["field timeout", "between 1 second and 24h"]),
    (with_(SQL, timeout=0), ["field timeout", "between 1 second and 24h"]),
    (with_(SQL, timeout=2.5), ["field timeout", "not a number"]),
    (with_(SQL, on_failure="abort"), ["field on_failure", "'stop', 'continue'"]),
    (with_(SQL, on_failure="continu"), ["field on_failure", "did you mean 'continue'?"]),
    # secrets
    (with_(SQL, secrets="db_admin"), ["field secrets", "must be a list"]),
    (with_(SQL, secrets=["db admin"]), ["field secrets", "item 1", "'db admin' is not valid"]),
    (with_(SQL, secrets=["a", "a"]), ["field secrets", "'a' is listed twice"]),
    (with_(SQL, secrets=[1]), ["field secrets", "item 1", "must be a string"]),
    (with_(SQL, secrets=["s"] * 65), ["field secrets", "limit is 64"]),
    # sql
    (with_(SQL, engine=DELETE), ["field engine", "is missing", "engine, connection, script"]),
    (with_(SQL, engine="oracle"), ["field engine", "'mysql', 'postgres'"]),
    (with_(SQL, engine="postgresql"), ["field engine", "did you mean 'postgres'?"]),
    (with_(SQL, connection=DELETE), ["field connection", "is missing"]),
    (with_(SQL, connection="billing db"), ["field connection", "is not valid"]),
    (with_(SQL, script=DELETE), ["field script", "is missing"]),
    (with_(SQL, script="sql/002.sql"), ["field script", "no release file is named 'sql/002.sql'",
                                        "did you mean 'sql/001_schema.sql'?"]),
    (with_(SQL, script="SQL/001_schema.sql"), ["field script", "did you mean"]),
    (with_(SQL, script="../secrets.sql"), ["field script", "contains '..'"]),
    (with_(SQL, script="sql/../../x.sql"), ["field script", "contains '..'"]),
    (with_(SQL, script="/etc/passwd"), ["field script", "is absolute"]),
    (with_(SQL, script="sql\\001.sql"), ["field script", "backslash"]),
    (with_(SQL, script="sql//001.sql"), ["field script", "empty path component"]),
    (with_(SQL, script="./sql/001.sql"), ["field script", "'.' path component"]),
    (with_(SQL, script="sql/\x1b[31m.sql"), ["field script", "U+001B"]),
    (with_(SQL, script=""), ["field script", "is empty"]),
    (with_(SQL, script=["sql/001_schema.sql"]), ["field script", "must be a file name"]),
    (with_(SQL, script=".env"), ["field script", "hidden", "not part of the release"]),
    (with_(SQL, script="release.toml"), ["field script", "release.toml itself"]),
    (with_(SQL, script="a" * 256), ["field script", "limit is 255 bytes"]),
    (with_(SQL, version="2.4 beta"), ["field version", "is not valid"]),
    (with_(SQL, version="-1"), ["field version", "is not valid"]),
    (with_(SQL, description=5), ["field description", "must be a string"]),
    (with_(SQL, description="bell\x07"), ["field description", "U+0007"]),
    # k8s
    (with_(K8S, connection=DELETE), ["field connection", "is missing", "connection, manifests"]),
    (with_(K8S, manifests=DELETE), ["field manifests", "is missing"]),
    (with_(K8S, manifests=[]), ["field manifests", "must not be empty"]),
    (with_(K8S, manifests="k8s/ns.yaml"), ["field manifests", "must be a list, not a string"]),
    (with_(K8S, manifests=["k8s/ns.yaml", "k8s/ns.yaml"]), ["field manifests", "listed twice"]),
    (with_(K8S, manifests=["k8s/ns.yaml", "k8s/missing.yaml"]),
     ["field manifests", "item 2", "no release file is named 'k8s/missing.yaml'"]),
    (with_(K8S, namespace="Billing"), ["field namespace", "Kubernetes namespace"]),
    (with_(K8S, namespace="-x"), ["field namespace", "is not valid"]),
    (with_(K8S, wait="yes"), ["field wait", "must be true or false"]),
    (with_(K8S, wait_timeout="5m"), ["field wait_timeout", "no effect unless wait = true"]),
    (with_(K8S, wait=True, wait_timeout="2h"), ["field wait_timeout", "longer than the step's"]),
    (with_(K8S, wait=True, wait_timeout="soon"), ["field wait_timeout", "is not a duration"]),
    # shell
    (with_(SHELL, script=DELETE), ["field script", "is missing"]),
    (with_(SHELL, interpreter="zsh"), ["field interpreter", "'bash', 'sh', 'python'"]),
    (with_(SHELL, interpreter="python3"), ["field interpreter", "did you mean 'python'?"]),
    (with_(SHELL, env="A=1"), ["field env", "must be a table"]),
    (with_(SHELL, env={"PORT": 8080}), ["field env", "'PORT' must be a string", 'PORT = "8080"']),
    (with_(SHELL, env={"1X": "v"}), ["field env", "'1X' is not valid"]),
    (with_(SHELL, env={"A-B": "v"}), ["field env", "'A-B' is not valid"]),
    (with_(SHELL, env={"TIANGONG_X": "v"}), ["field env", "reserved"]),
    (with_(SHELL, env={"A": "nul\x00"}), ["field env", "NUL"]),
    (with_(SHELL, secrets_via="file"), ["field secrets_via", "'env', 'stdin'"]),
    (with_(SHELL, args="--flag"), ["field args", "must be a list"]),
    (with_(SHELL, args=["--n", 2]), ["field args", "item 2", "must be a string"]),
    (with_(SHELL, args=["a\x00b"]), ["field args", "NUL"]),
    (with_(SHELL, secrets=["db-pw", "DB_PW"]),
     ["field secrets", "would both be exported as TIANGONG_SECRET_DB_PW"]),
]


@pytest.mark.parametrize(("raw", "words"), BAD)
def test_normalize_rejects(raw: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ReleaseFormatError) as info:
        normalize_step(raw, 3, FILES)
    message = str(info.value)
    for word in words:
        assert word in message
    assert info.value.check == "release"
    if isinstance(raw.get("name"), str) and raw["name"] == "create schema":
        assert message.startswith("step 4 ('create schema')")


def test_normalize_rejects_a_non_table() -> None:
    with pytest.raises(ReleaseFormatError, match="step 2: must be a table, not a list"):
        normalize_step([("name", "x")], 1, FILES)  # type: ignore[arg-type]


# --- validate_step: normalized dicts from a verified manifest ---

NORMALIZED = {
    "sql": normalize_step(SQL, 0, FILES),
    "k8s": normalize_step(with_(K8S, wait=True, wait_timeout="1m", namespace="b"), 0, FILES),
    "shell": normalize_step(with_(SHELL, secrets=["t"], env={"A": "1"}), 0, FILES),
}

VALIDATE_BAD: list[Any] = [
    ("sql", {"timeout_s": DELETE}, ["field timeout_s", "is missing"]),
    ("sql", {"timeout": 300}, ["'timeout' is not a known field", "did you mean 'timeout_s'?"]),
    ("sql", {"timeout_s": "5m"}, ["field timeout_s", "must be an integer"]),
    ("sql", {"timeout_s": True}, ["field timeout_s", "must be an integer"]),
    ("sql", {"timeout_s": MAX_TIMEOUT_S + 1}, ["field timeout_s", "is not between"]),
    ("sql", {"secrets": DELETE}, ["field secrets", "is missing"]),
    ("sql", {"on_failure": DELETE}, ["field on_failure", "is missing"]),
    ("sql", {"version": None}, ["field version", "must be a string"]),
    ("sql", {"script": "../x.sql"}, ["field script", "contains '..'"]),
    ("sql", {"script": "sql/.secret.sql"}, ["field script", "is hidden"]),
    ("sql", {"script": "release.toml"}, ["field script", "release.toml itself"]),
    ("sql", {"name": DELETE}, ["field name", "is missing"]),
    ("sql", {"kind": "bash"}, ["field kind", "is not one of"]),
    ("k8s", {"wait": DELETE}, ["field wait", "is missing"]),
    ("k8s", {"wait_timeout": "1m"}, ["'wait_timeout' is not a known field",
                                      "did you mean 'wait_timeout_s'?"]),
    ("k8s", {"wait": False}, ["field wait_timeout_s", "no effect unless wait = true"]),
    ("k8s", {"wait_timeout_s": 0}, ["field wait_timeout_s", "is not between"]),
    ("k8s", {"manifests": ("k8s/ns.yaml",)}, ["field manifests", "not in normalized form"]),
    ("shell", {"interpreter": DELETE}, ["field interpreter", "is missing"]),
    ("shell", {"env": DELETE}, ["field env", "is missing"]),
    ("shell", {"args": DELETE}, ["field args", "is missing"]),
    ("shell", {"secrets_via": DELETE}, ["field secrets_via", "is missing"]),
    ("shell", {"env": {"TIANGONG_SECRET_T": "x"}}, ["field env", "reserved"]),
    ("shell", {"extra": 1}, ["'extra' is not a known field of a shell step"]),
]


@pytest.mark.parametrize(("kind", "changes", "words"), VALIDATE_BAD)
def test_validate_rejects(kind: str, changes: dict[str, Any], words: list[str]) -> None:
    step = with_(NORMALIZED[kind], **changes)
    with pytest.raises(ReleaseFormatError) as info:
        validate_step(step, index=6)
    message = str(info.value)
    assert message.startswith("step 7 ")
    for word in words:
        assert word in message


def test_validate_names_the_step_without_an_index() -> None:
    with pytest.raises(ReleaseFormatError, match=r"^step \('create schema'\), field engine"):
        validate_step(with_(NORMALIZED["sql"], engine="oracle"))


def test_validate_rejects_a_non_mapping() -> None:
    with pytest.raises(ReleaseFormatError, match="must be a mapping"):
        validate_step(["x"])  # type: ignore[arg-type]


def test_referenced_files_and_secret_env_name() -> None:
    assert referenced_files(NORMALIZED["sql"]) == ["sql/001_schema.sql"]
    assert referenced_files(NORMALIZED["k8s"]) == ["k8s/ns.yaml", "k8s/app.yaml"]
    assert referenced_files(NORMALIZED["shell"]) == ["scripts/smoke.sh"]
    assert secret_env_name("billing-api-token") == "TIANGONG_SECRET_BILLING_API_TOKEN"


# --- arbitrary input never raises anything but ReleaseFormatError ---

_KEYS = sorted(
    {*SQL, *K8S, *SHELL, "timeout", "on_failure", "secrets", "version", "description",
     "namespace", "wait", "wait_timeout", "interpreter", "env", "secrets_via", "args",
     "timeout_s", "wait_timeout_s"}
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        ["sql", "k8s", "shell", "postgres", "mysql", "bash", "python", "env", "stdin", "stop",
         "5m", "1h30m", "x.py", "k8s/ns.yaml", "../x", "TIANGONG_X", "\ud800"]
    ),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(["A", "B_1"])), inner,
                        max_size=4),
    ),
    max_leaves=8,
)
_FULL = [
    with_(SQL, version="1", description="d", timeout="5m", secrets=["a"]),
    with_(K8S, namespace="ns", wait=True, wait_timeout="1m", on_failure="continue"),
    with_(SHELL, interpreter="sh", env={"A": "1"}, secrets_via="stdin", args=["x"], secrets=["b"]),
]
_keys = st.one_of(st.sampled_from(_KEYS), st.text(max_size=8), st.integers())


@st.composite
def _steps(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid step with up to four keys deleted, replaced or added — or any small dict."""
    if draw(st.booleans()):
        return draw(st.dictionaries(_keys, _values, max_size=8))
    step: dict[Any, Any] = copy.deepcopy(draw(st.sampled_from(_FULL)))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        key = draw(_keys)
        if draw(st.booleans()):
            step.pop(key, None)
        else:
            step[key] = draw(_values)
    return step


@settings(derandomize=True, max_examples=200, deadline=None)
@given(raw=_steps(), index=st.integers(min_value=0, max_value=10**6))
def test_normalize_step_only_raises_release_format_error(raw: dict[Any, Any], index: int) -> None:
    try:
        step = normalize_step(raw, index, FILES)
    except ReleaseFormatError:
        return
    validate_step(step)  # whatever normalize accepts, validate accepts


@settings(derandomize=True, max_examples=150, deadline=None)
@given(step=_steps())
def test_validate_step_only_raises_release_format_error(step: dict[Any, Any]) -> None:
    with contextlib.suppress(ReleaseFormatError):
        validate_step(step)
