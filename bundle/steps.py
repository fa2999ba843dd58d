"""Step schema: turn a ``[[steps]]`` table into a normalized step, and check normalized steps.

Implements docs/release-format.md §3 ("Steps"). Two entry points:

* :func:`normalize_step` — for the hub, on a table read from ``release.toml``: checks every
  field, fills in defaults and returns the normalized dict that goes into the signed manifest
  (``timeout = "5m"`` becomes ``timeout_s = 300``, and so on).
* :func:`validate_step` — for the agent, on a normalized dict taken from a *verified*
  manifest: checks that it has exactly the normalized keys with valid values. It cannot check
  that referenced files exist (the manifest's payload list does that).

Unknown keys are errors, with a "did you mean" hint, because a misspelt optional field
(``on_faliure = "continue"``) would otherwise be ignored silently.

This module deliberately does not know about connections, secrets' values or executors: it
checks the shape of a step, not whether a site can run it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

from bundle.errors import ReleaseFormatError
from bundle.release_names import file_name_problem, is_hidden

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_TIMEOUT_S",
    "STEP_KINDS",
    "needed_connection_type",
    "normalize_step",
    "parse_duration",
    "parse_version_requirement",
    "referenced_files",
    "secret_env_name",
    "status_expected",
    "undo_support",
    "validate_step",
    "version_satisfies",
]

STEP_KINDS = ("sql", "k8s", "shell", "agent-upgrade", "file", "undo", "http")
#: A step's timeout when it gives none (in seconds).
DEFAULT_TIMEOUT_S = 10 * 60  # seconds
#: How long an agent-upgrade step gives the new version to come up, by default (in seconds).
DEFAULT_CONFIRM_TIMEOUT_S = 2 * 60  # seconds
#: Longest timeout (and k8s wait_timeout) a step may ask for (in seconds).
MAX_TIMEOUT_S = 24 * 60 * 60  # seconds
MAX_STEP_NAME_CHARS = 100  # characters
MAX_DESCRIPTION_CHARS = 4096  # characters
MAX_LIST_ITEMS = 64  # secrets, args, manifests, env entries per step
MAX_VALUE_CHARS = 4096  # one arg or env value, in characters

ON_FAILURE = ("stop", "continue")
SQL_ENGINES = ("mysql", "postgres")
INTERPRETERS = ("bash", "sh", "python")
SECRETS_VIA = ("env", "stdin")
#: Environment variables with this prefix are set by the agent; steps may not set them.
RESERVED_ENV_PREFIX = "TIANGONG_"
#: With secrets_via = "env", secret "db-password" arrives as TIANGONG_SECRET_DB_PASSWORD.
SECRET_ENV_PREFIX = "TIANGONG_SECRET_"  # noqa: S105 - a variable name prefix, not a secret

_SECRET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_CONNECTION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAMESPACE_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_PARAM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_MODE_RE = re.compile(r"0[0-7]{3}")
#: Longest destination path of a file step, in characters.
MAX_PATH_CHARS = 4096  # characters
_DURATION_RE = re.compile(r"(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,9})s)?")

_FILE_KEYS = ("source", "path", "mode", "owner", "group", "render", "params", "follow_symlink")
_HTTP_RAW = ("method", "url", "connection", "headers", "secret_headers", "body", "expect",
             "retries", "retry_delay", "request_timeout")
_HTTP_NORM = ("method", "url", "connection", "headers", "secret_headers", "body", "expect",
              "retries", "retry_delay_s", "request_timeout_s")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
#: Most retries an http step may ask for.
MAX_HTTP_RETRIES = 20  # attempts after the first
MAX_URL_CHARS = 2048  # characters
DEFAULT_HTTP_EXPECT = ("2xx",)
DEFAULT_RETRY_DELAY_S = 1  # seconds before the first retry; doubled for each next one
DEFAULT_REQUEST_TIMEOUT_S = 30  # seconds one attempt may take
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
_STATUS_CLASS_RE = re.compile(r"[1-5]xx")
_UNDO_KEYS = ("bundle", "step", "connection", "engine", "script", "interpreter", "env", "args",
              "secrets_via")
# Raw (release.toml) keys and normalized keys, common and per kind.
_COMMON_RAW = ("name", "kind", "timeout", "on_failure", "secrets", "after")
_COMMON_NORM = ("name", "kind", "timeout_s", "on_failure", "secrets", "after")
_KIND_RAW: dict[str, tuple[str, ...]] = {
    "sql": ("engine", "connection", "script", "version", "description", "down", "check",
            "server_version"),
    "k8s": ("connection", "manifests", "namespace", "wait", "wait_timeout"),
    "shell": ("script", "interpreter", "env", "secrets_via", "args", "rollback", "check"),
    "agent-upgrade": ("wheel", "confirm_timeout"),
    "file": _FILE_KEYS,
    "undo": _UNDO_KEYS,
    "http": _HTTP_RAW,
}
_KIND_NORM: dict[str, tuple[str, ...]] = {
    "sql": ("engine", "connection", "script", "version", "description", "down", "check",
            "server_version"),
    "k8s": ("connection", "manifests", "namespace", "wait", "wait_timeout_s"),
    "shell": ("script", "interpreter", "env", "secrets_via", "args", "rollback", "check"),
    "agent-upgrade": ("wheel", "confirm_timeout_s"),
    "file": _FILE_KEYS,
    "undo": _UNDO_KEYS,
    "http": _HTTP_NORM,
}
# Raw duration keys and their normalized names (seconds).
_DURATION_KEYS = {"wait_timeout": "wait_timeout_s", "confirm_timeout": "confirm_timeout_s",
                  "retry_delay": "retry_delay_s", "request_timeout": "request_timeout_s"}
# Normalized keys that are left out when the release does not give them.
_OPTIONAL_NORM: dict[str, frozenset[str]] = {
    "sql": frozenset({"version", "description", "down", "check", "server_version"}),
    "k8s": frozenset({"namespace", "wait_timeout_s"}),
    "shell": frozenset({"rollback", "check"}),
    "agent-upgrade": frozenset(),
    "file": frozenset({"owner", "group"}),
    "undo": frozenset(_UNDO_KEYS[2:]),
    "http": frozenset({"connection", "body"}),
}


class _FieldError(Exception):
    """A field's value breaks a rule; turned into ReleaseFormatError with the step's name."""


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(index: int | None, name: object) -> str:
    label = f"({name!r})" if _is_good_name(name) else "(unnamed)"
    return f"step {index + 1} {label}" if index is not None else f"step {label}"


def _fail(index: int | None, name: object, field: str, message: str) -> NoReturn:
    raise ReleaseFormatError(f"{_where(index, name)}, field {field}: {message}")


def _hint(word: object, choices: Collection[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- field checkers: take the raw value, return the normalized value or raise _FieldError ---


def _text(value: object, max_chars: int, *, multiline: bool = False) -> str:
    if not isinstance(value, str):
        raise _FieldError(f"must be a string, not {_type(value)}")
    if len(value) > max_chars:
        raise _FieldError(f"is {len(value)} characters long; the limit is {max_chars}")
    for pos, ch in enumerate(value):
        if ch.isprintable() or (multiline and ch in "\n\t"):
            continue
        raise _FieldError(f"contains the non-printable character U+{ord(ch):04X} at {pos + 1}")
    return value


def _type(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    for typ, label in names.items():
        if type(value) is typ:
            return label
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


def _is_good_name(value: object) -> bool:
    try:
        _step_name(value)
    except _FieldError:
        return False
    return True


def _step_name(value: object) -> str:
    name = _text(value, MAX_STEP_NAME_CHARS)
    if not name.strip():
        raise _FieldError("must not be empty")
    if name != name.strip():
        raise _FieldError("must not start or end with white space")
    return name


def _after(value: object) -> list[str]:
    """Names of the steps this one runs after (§3.7); that they exist is checked by
    ``bundle.dag.check_graph`` once every step is known."""
    names = _list(value, _step_name)
    seen: set[str] = set()
    for name in names:
        if name.casefold() in seen:
            raise _FieldError(f"{name!r} is listed twice (step names ignore letter case)")
        seen.add(name.casefold())
    return names


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise _FieldError(f"{_show(value)} is not one of {allowed}{_hint(value, choices)}")
        return value

    return check


def _pattern(regex: re.Pattern[str], rule: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise _FieldError(f"must be a string, not {_type(value)}")
        if regex.fullmatch(value) is None:
            raise _FieldError(f"{_show(value)} is not valid: {rule}")
        return value

    return check


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _FieldError(f"must be true or false, not {_type(value)} {_show(value)}")
    return value


def parse_duration(value: object) -> int:
    """Seconds in a duration: an integer of seconds, or a string like ``"90s"``, ``"5m"``,
    ``"1h30m"`` (units h, m, s, in that order, each at most once). Must be 1 s to 24 h.

    Raises:
        ValueError: with an operator-facing reason.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f"must be a whole number of seconds or a duration string, not {_type(value)}"
        )
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION_RE.fullmatch(value)
        if not value or match is None:
            hint = f' (did you mean "{value}s"?)' if value.isdigit() else ""
            raise ValueError(
                f"{_show(value)} is not a duration{hint}: write seconds as a number (300) or "
                'a string with units h, m and s ("90s", "5m", "1h30m")'
            )
        h, m, s = (int(g) if g else 0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    if not 1 <= seconds <= MAX_TIMEOUT_S:
        raise ValueError(
            f"{_show(value)} is {seconds} seconds; it must be between 1 second and 24h"
        )
    return seconds


def _duration(value: object) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _FieldError(str(exc)) from None


def _seconds(value: object) -> int:
    """A normalized duration: an integer, 1 .. MAX_TIMEOUT_S."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(f"must be an integer number of seconds, not {_type(value)}")
    if not 1 <= value <= MAX_TIMEOUT_S:
        raise _FieldError(f"{value} is not between 1 and {MAX_TIMEOUT_S} seconds")
    return value


def _list(value: object, item: Callable[[object], str], *, min_items: int = 0) -> list[str]:
    if not isinstance(value, list | tuple):
        raise _FieldError(f"must be a list, not {_type(value)}")
    if len(value) > MAX_LIST_ITEMS:
        raise _FieldError(f"has {len(value)} items; the limit is {MAX_LIST_ITEMS}")
    if len(value) < min_items:
        raise _FieldError("must not be empty")
    out: list[str] = []
    for pos, raw in enumerate(value, 1):
        try:
            out.append(item(raw))
        except _FieldError as exc:
            raise _FieldError(f"item {pos}: {exc}") from None
    return out


def _unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise _FieldError(f"{value!r} is listed twice")
        seen.add(value)
    return values


_secret_name = _pattern(
    _SECRET_RE,
    "secret names are letters, digits, '_' and '-', starting with a letter or digit, at "
    "most 64 characters",
)


def _secrets(value: object) -> list[str]:
    return _unique(_list(value, _secret_name))


def _file_ref(files: Collection[str] | None) -> Callable[[object], str]:
    """A reference to a release file; checked against ``files`` when they are known."""

    def check(value: object) -> str:
        if not isinstance(value, str):
            raise _FieldError(f"must be a file name (a string), not {_type(value)}")
        problem = file_name_problem(value)
        if problem is not None:
            raise _FieldError(f"file name {_show(value)} {problem}")
        if value == "release.toml":
            raise _FieldError("release.toml itself is not a release file")
        if is_hidden(value):
            raise _FieldError(
                f"{value!r} is hidden (a name starts with '.'); hidden files are not part of "
                "the release"
            )
        if files is None or value in files:
            return value
        raise _FieldError(f"no release file is named {value!r}{_hint(value, files)}")

    return check


def _arg(value: object) -> str:
    """An argument or environment value: any string without NUL or lone surrogates."""
    if not isinstance(value, str):
        raise _FieldError(f"must be a string, not {_type(value)}")
    if len(value) > MAX_VALUE_CHARS:
        raise _FieldError(f"is {len(value)} characters long; the limit is {MAX_VALUE_CHARS}")
    if "\x00" in value:
        raise _FieldError("contains a NUL character")
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise _FieldError("is not valid Unicode (lone surrogate)")
    return value


def _string_table(
    value: object, *, what: str, example: str, name_re: re.Pattern[str], max_name: int,
    reserved: str | None = None,
) -> dict[str, str]:
    """A table of name -> string (``env``, ``params``), sorted by name."""
    if not isinstance(value, Mapping):
        raise _FieldError(f"must be a table like {example}, not {_type(value)}")
    if len(value) > MAX_LIST_ITEMS:
        raise _FieldError(f"has {len(value)} {what}s; the limit is {MAX_LIST_ITEMS}")
    out: dict[str, str] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or name_re.fullmatch(key) is None:
            raise _FieldError(
                f"{what} name {_show(key)} is not valid: letters, digits and '_', not "
                f"starting with a digit, at most {max_name} characters"
            )
        if reserved is not None and key.upper().startswith(reserved):
            raise _FieldError(f"{what} {key!r}: names starting with {reserved} are reserved")
        if not isinstance(raw, str):
            raise _FieldError(
                f"{what} {key!r} must be a string, not {_type(raw)} "
                f'(quote it: {key} = "{raw!s:.40}")'
            )
        try:
            out[key] = _arg(raw)
        except _FieldError as exc:
            raise _FieldError(f"{what} {key!r} {exc}") from None
    return dict(sorted(out.items()))


def _env(value: object) -> dict[str, str]:
    return _string_table(value, what="variable", example='{ LOG_LEVEL = "info" }',
                         name_re=_ENV_NAME_RE, max_name=128, reserved=RESERVED_ENV_PREFIX)


def _params(value: object) -> dict[str, str]:
    return _string_table(value, what="parameter", example='{ port = "8080" }',
                         name_re=_PARAM_NAME_RE, max_name=64)


def _target_path(value: object) -> str:
    """A file step's destination: an absolute path without '.', '..' or empty components."""
    text = _text(value, MAX_PATH_CHARS)
    if "\\" in text:
        raise _FieldError(f"{_show(text)} contains a backslash; write '/' between directories")
    if not text.startswith("/"):
        raise _FieldError(f"{_show(text)} is not absolute; the path must start with '/'")
    parts = text[1:].split("/")
    if text == "/" or text.endswith("/"):
        raise _FieldError(f"{_show(text)} names a directory; give the path of a file")
    for part in parts:
        if part in ("", ".", ".."):
            raise _FieldError(
                f"{_show(text)} has an empty, '.' or '..' component; write the plain path"
            )
    return text


def _mode(value: object) -> str:
    if not isinstance(value, str) or _MODE_RE.fullmatch(value) is None:
        raise _FieldError(
            f"{_show(value)} is not a file mode: write 4 octal digits as a string, like "
            '"0644" or "0600" (set-id and sticky bits are not allowed)'
        )
    return value


# --- the schema ---

_Check = Callable[[object], object]


def _raw_checks(files: Collection[str] | None) -> dict[str, dict[str, _Check]]:
    """Checkers for the kind-specific keys of a release.toml step table."""
    ref = _file_ref(files)
    return {
        "sql": {
            "engine": _choice(SQL_ENGINES),
            "connection": _connection,
            "script": ref,
            "version": _pattern(_VERSION_RE, _VERSION_RULE),
            "description": lambda v: _text(v, MAX_DESCRIPTION_CHARS, multiline=True),
            "down": ref,
            "check": ref,
            "server_version": _server_version,
        },
        "k8s": {
            "connection": _connection,
            "manifests": lambda v: _unique(_list(v, ref, min_items=1)),
            "namespace": _pattern(_NAMESPACE_RE, _NAMESPACE_RULE),
            "wait": _bool,
            "wait_timeout": _duration,
        },
        "shell": {
            "script": ref,
            "interpreter": _choice(INTERPRETERS),
            "env": _env,
            "secrets_via": _choice(SECRETS_VIA),
            "args": lambda v: _list(v, _arg),
            "rollback": ref,
            "check": ref,
        },
        "agent-upgrade": {"wheel": ref, "confirm_timeout": _duration},
        "file": {
            "source": ref,
            "path": _target_path,
            "mode": _mode,
            "owner": _account,
            "group": _account,
            "render": _bool,
            "params": _params,
            "follow_symlink": _bool,
        },
        "undo": {"bundle": _bundle_id, "step": _step_number, "connection": _connection,
                 "engine": _choice(SQL_ENGINES), "script": ref,
                 "interpreter": _choice(INTERPRETERS), "env": _env,
                 "args": lambda v: _list(v, _arg), "secrets_via": _choice(SECRETS_VIA)},
        "http": {
            "method": _choice(HTTP_METHODS),
            "url": _url,
            "connection": _connection,
            "headers": _headers,
            "secret_headers": _secret_headers,
            "body": ref,
            "expect": _expect,
            "retries": _retries,
            "retry_delay": _duration,
            "request_timeout": _duration,
        },
    }


_VERSION_RULE = (
    "letters, digits and '.', '_', '+', '-', starting with a letter or digit, at most 64 characters"
)
_NAMESPACE_RULE = "a Kubernetes namespace: lower-case letters, digits and '-', at most 63"
_connection = _pattern(
    _CONNECTION_RE,
    "connection names are letters, digits and '.', '_', '-', starting with a letter or "
    "digit, at most 64 characters",
)
_bundle_id = _pattern(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"),
    "a bundle id: letters, digits, '.', '_', '-', starting with a letter or digit, at most "
    "128 characters",
)


_REQ_CLAUSE = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(\d{1,9}(?:\.\d{1,9}){0,3})\s*")
_LEADING_VERSION = re.compile(r"\s*v?(\d{1,9}(?:\.\d{1,9}){0,3})")
_REQ_RULE = ("a version requirement: comparisons joined by ',', each one of >=, >, <=, <, "
             "==, != and a version of up to 4 numbers, like \">= 14\" or \">= 10.6, < 12\"")


def parse_version_requirement(value: object) -> list[tuple[str, tuple[int, ...]]]:
    """The clauses of a ``server_version`` requirement (docs/release-format.md §3.2):
    ``">= 10.6, < 12"`` → ``[(">=", (10, 6)), ("<", (12,))]``.

    Raises:
        ValueError: not a string of such clauses (the message states the rule).
    """
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ValueError(_REQ_RULE)
    clauses = []
    for part in value.split(","):
        found = _REQ_CLAUSE.fullmatch(part)
        if found is None:
            raise ValueError(_REQ_RULE)
        clauses.append((found.group(1), tuple(int(x) for x in found.group(2).split("."))))
    return clauses


def version_satisfies(server_version: str, requirement: str) -> bool | None:
    """Whether the leading version of ``server_version`` (``"16.4 (Debian …)"``,
    ``"10.11.6-MariaDB"``) meets ``requirement``; None when it holds no version number.
    Versions compare number by number, missing numbers counting as 0.

    Raises:
        ValueError: ``requirement`` is not a valid requirement.
    """
    clauses = parse_version_requirement(requirement)
    found = _LEADING_VERSION.match(server_version)
    if found is None:
        return None
    have = tuple(int(x) for x in found.group(1).split("."))
    for op, want in clauses:
        width = max(len(have), len(want))
        a = have + (0,) * (width - len(have))
        b = want + (0,) * (width - len(want))
        ok = {">=": a >= b, ">": a > b, "<=": a <= b, "<": a < b, "==": a == b,
              "!=": a != b}[op]
        if not ok:
            return False
    return True


def _server_version(value: object) -> str:
    try:
        parse_version_requirement(value)
    except ValueError as exc:
        raise _FieldError(str(exc)) from None
    assert isinstance(value, str)
    return value


def _step_number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise _FieldError(f"{_show(value)} is not a step number (an integer from 1 to 1000)")
    return value


def _url(value: object) -> str:
    """An http step's URL: ``http://`` or ``https://``, a host, no user name or password
    (those are secrets: use ``secret_headers`` or the connection), no white space."""
    text = _text(value, MAX_URL_CHARS)
    match = re.fullmatch(r"(https?)://([^/?#]*)([/?#].*)?", text)
    if match is None:
        raise _FieldError(f"{_show(text)} is not an http:// or https:// URL")
    if any(ch.isspace() for ch in text):
        raise _FieldError(f"{_show(text)} contains white space; percent-encode it (%20)")
    authority = match.group(2)
    if "@" in authority:
        raise _FieldError("must not carry a user name or password (they would be in the "
                          "signed manifest and in logs); put credentials in secret_headers "
                          "or the site's connection")
    if not authority or authority.startswith(":"):
        raise _FieldError(f"{_show(text)} has no host")
    return text


def _header_name(value: object) -> str:
    if not isinstance(value, str) or _HEADER_NAME_RE.fullmatch(value) is None:
        raise _FieldError(f"header name {_show(value)} is not valid: letters, digits and "
                          "!#$%&'*+.^_`|~- , at most 128 characters")
    return value


def _header_value(name: str, raw: object) -> str:
    if not isinstance(raw, str):
        raise _FieldError(f"header {name!r} must be a string, not {_type(raw)}")
    if any(ch in raw for ch in "\r\n\x00"):
        raise _FieldError(f"header {name!r} contains a line break or NUL")
    return _arg(raw)


def _header_secret(name: str, raw: object) -> str:
    try:
        return _secret_name(raw)
    except _FieldError as exc:
        raise _FieldError(f"header {name!r}: {exc}") from None


def _header_table(value: object, example: str,
                  item: Callable[[str, object], str]) -> dict[str, str]:
    """A table of header name -> ``item(name, value)``, sorted by name."""
    if not isinstance(value, Mapping):
        raise _FieldError(f"must be a table like {example}, not {_type(value)}")
    if len(value) > MAX_LIST_ITEMS:
        raise _FieldError(f"has {len(value)} headers; the limit is {MAX_LIST_ITEMS}")
    out = {_header_name(key): item(str(key), raw) for key, raw in value.items()}
    return dict(sorted(out.items()))


def _headers(value: object) -> dict[str, str]:
    """``headers``: header name -> value (a string without CR, LF or NUL)."""
    return _header_table(value, '{ Accept = "application/json" }', _header_value)


def _secret_headers(value: object) -> dict[str, str]:
    """``secret_headers``: header name -> name of a secret whose value is the header's."""
    return _header_table(value, '{ Authorization = "api-token" } (header name = secret name)',
                         _header_secret)


def _expect_item(value: object) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    if isinstance(value, str) and _STATUS_CLASS_RE.fullmatch(value):
        return value
    raise _FieldError(f"{_show(value)} is not an HTTP status (an integer from 100 to 599) or "
                      'a class of them ("2xx")')


def _expect(value: object) -> list[int | str]:
    if not isinstance(value, list | tuple):
        raise _FieldError(f'must be a list like [200, 204] or ["2xx"], not {_type(value)}')
    if not value:
        raise _FieldError("must not be empty")
    if len(value) > MAX_LIST_ITEMS:
        raise _FieldError(f"has {len(value)} items; the limit is {MAX_LIST_ITEMS}")
    out: list[int | str] = []
    for pos, raw in enumerate(value, 1):
        try:
            item = _expect_item(raw)
        except _FieldError as exc:
            raise _FieldError(f"item {pos}: {exc}") from None
        if item in out:
            raise _FieldError(f"{item!r} is listed twice")
        out.append(item)
    return out


def _retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_HTTP_RETRIES:
        raise _FieldError(f"{_show(value)} is not a number of retries (an integer from 0 to "
                          f"{MAX_HTTP_RETRIES})")
    return value


def status_expected(status: int, expect: Collection[int | str]) -> bool:
    """Whether HTTP ``status`` is one of ``expect`` (codes, or classes like ``"2xx"``)."""
    return status in expect or f"{status // 100}xx" in expect


_account = _pattern(
    _ACCOUNT_RE,
    "a user or group name or number: letters, digits, '_', '.', '-', at most 32 characters",
)
_REQUIRED_RAW = {
    "sql": ("engine", "connection", "script"),
    "k8s": ("connection", "manifests"),
    "shell": ("script",),
    "agent-upgrade": ("wheel",),
    "file": ("source", "path"),
    "undo": ("bundle", "step"),
    "http": ("url",),
}
_DEFAULTS: dict[str, dict[str, Callable[[], object]]] = {
    "sql": {},
    "k8s": {"wait": lambda: False},
    "shell": {
        "interpreter": lambda: "bash",
        "env": dict,
        "secrets_via": lambda: "env",
        "args": list,
    },
    "agent-upgrade": {"confirm_timeout": lambda: DEFAULT_CONFIRM_TIMEOUT_S},
    "file": {
        "mode": lambda: "0644",
        "render": lambda: False,
        "params": dict,
        "follow_symlink": lambda: False,
    },
    "undo": {},
    "http": {
        "method": lambda: "GET",
        "headers": dict,
        "secret_headers": dict,
        "expect": lambda: list(DEFAULT_HTTP_EXPECT),
        "retries": lambda: 0,
        "retry_delay": lambda: DEFAULT_RETRY_DELAY_S,
        "request_timeout": lambda: DEFAULT_REQUEST_TIMEOUT_S,
    },
}


def _check_keys(
    step: Mapping[Any, Any],
    index: int | None,
    name: object,
    common: tuple[str, ...],
    allowed: dict[str, tuple[str, ...]],
) -> str:
    """Check ``kind`` and that every key is known for it; return the kind."""
    kind = step.get("kind")
    if "kind" not in step:
        _fail(index, name, "kind", "is missing; give one of " + ", ".join(map(repr, STEP_KINDS)))
    if not isinstance(kind, str) or kind not in STEP_KINDS:
        allowed_kinds = ", ".join(map(repr, STEP_KINDS))
        message = f"{_show(kind)} is not one of {allowed_kinds}{_hint(kind, STEP_KINDS)}"
        _fail(index, name, "kind", message)
    known = (*common, *allowed[kind])
    for key in step:
        if isinstance(key, str) and key in known:
            continue
        owners = [k for k in STEP_KINDS if isinstance(key, str) and key in allowed[k]]
        if owners:
            listed = ", ".join(owners[:-1]) + " and " + owners[-1] if len(owners) > 1 else owners[0]
            why = f"is a field of {listed} steps, not of {kind} steps"
        else:
            why = f"is not a known field of a {kind} step{_hint(key, known)}"
        raise ReleaseFormatError(f"{_where(index, name)}: {_show(key)} {why}")
    return kind


def normalize_step(
    raw: Mapping[str, Any], index: int, file_names: Collection[str]
) -> dict[str, Any]:
    """Check one ``[[steps]]`` table and return its normalized form (docs §3.3).

    Args:
        raw: the table as read from ``release.toml``.
        index: the step's 0-based position; messages count from 1 ("step 2").
        file_names: the names of the release's files; every file the step references must
            be one of them.

    Raises:
        ReleaseFormatError: naming the step number, the step name and the field, for a
            missing or unknown field, a wrong type or a value that breaks a rule.
    """
    if not isinstance(raw, Mapping):
        raise ReleaseFormatError(f"step {index + 1}: must be a table, not {_type(raw)}")
    name = raw.get("name")
    if "name" not in raw:
        _fail(index, None, "name", "is missing; every step needs a unique name")
    try:
        name = _step_name(name)
    except _FieldError as exc:
        _fail(index, None, "name", str(exc))
    kind = _check_keys(raw, index, name, _COMMON_RAW, _KIND_RAW)

    out: dict[str, Any] = {"name": name, "kind": kind}
    common: dict[str, tuple[str, _Check, Callable[[], object]]] = {
        "timeout": ("timeout_s", _duration, lambda: DEFAULT_TIMEOUT_S),
        "on_failure": ("on_failure", _choice(ON_FAILURE), lambda: "stop"),
        "secrets": ("secrets", _secrets, list),
    }
    for key, (norm_key, check, default) in common.items():
        out[norm_key] = _apply(raw, key, check, default, index, name)
    if "after" in raw:  # only when given, so releases without it keep their content hash
        out["after"] = _apply(raw, "after", _after, None, index, name)

    checks = _raw_checks(file_names)[kind]
    for key in _KIND_RAW[kind]:
        if key in _REQUIRED_RAW[kind] and key not in raw:
            needs = ", ".join(_REQUIRED_RAW[kind])
            _fail(index, name, key, f"is missing; a {kind} step needs {needs}")
        norm_key = _DURATION_KEYS.get(key, key)
        if key in raw:
            out[norm_key] = _apply(raw, key, checks[key], None, index, name)
        elif key in _DEFAULTS[kind]:
            out[norm_key] = _DEFAULTS[kind][key]()
    _check_combinations(out, index, raw_keys=True)
    return out


def _apply(
    step: Mapping[str, Any],
    key: str,
    check: _Check,
    default: Callable[[], object] | None,
    index: int | None,
    name: object,
) -> object:
    if key not in step:
        return default() if default is not None else None
    try:
        return check(step[key])
    except _FieldError as exc:
        _fail(index, name, key, str(exc))


def _check_combinations(step: Mapping[str, Any], index: int | None, *, raw_keys: bool) -> None:
    """Rules that involve two fields."""
    name = step["name"]
    if step["kind"] == "k8s" and "wait_timeout_s" in step:
        field = "wait_timeout" if raw_keys else "wait_timeout_s"
        if not step["wait"]:
            _fail(index, name, field, "has no effect unless wait = true")
        if step["wait_timeout_s"] > step["timeout_s"]:
            message = (
                f"{step['wait_timeout_s']} seconds is longer than the step's timeout "
                f"({step['timeout_s']} seconds)"
            )
            _fail(index, name, field, message)
    if step["kind"] == "undo":
        _check_undo(step, index)
    if step["kind"] == "http":
        _check_http(step, index, raw_keys)
    if step["kind"] == "file" and step["params"] and not step["render"]:
        _fail(index, name, "params", "has no effect unless render = true")
    for first, second in (("script", "down"), ("script", "rollback")):
        if second in step and step[second] == step.get(first):
            _fail(index, name, second, f"is the step's {first} itself; give the undo script")
    if "check" in step and step["check"] in (step.get("script"), step.get("down"),
                                             step.get("rollback")):
        _fail(index, name, "check", "is a script the step changes things with; give a script "
              "that only looks (it runs in a preflight plan)")
    if step["kind"] == "shell":
        # The shell executor exports secret "db-password" as TIANGONG_SECRET_DB_PASSWORD.
        seen: dict[str, str] = {}
        for secret in step["secrets"]:
            var = secret_env_name(secret)
            if var in seen:
                message = (
                    f"{seen[var]!r} and {secret!r} would both be exported as {var}; "
                    "rename one of them"
                )
                _fail(index, name, "secrets", message)
            seen[var] = secret


def _check_http(step: Mapping[str, Any], index: int | None, raw_keys: bool) -> None:
    """Secret headers name listed secrets; a header is plain or secret, not both; a body
    only with a method that sends one; one attempt fits in the step's timeout."""
    name = step["name"]
    for header, secret in step["secret_headers"].items():
        if secret not in step["secrets"]:
            _fail(index, name, "secret_headers", f"header {header!r} takes secret {secret!r}, "
                  "which is not in the step's secrets; add it there")
    plain = {h.lower() for h in step["headers"]}
    for header in step["secret_headers"]:
        if header.lower() in plain:
            _fail(index, name, "secret_headers", f"header {header!r} is also in headers; give "
                  "it once")
    if "body" in step and step["method"] in ("GET", "HEAD"):
        _fail(index, name, "body", f"a {step['method']} request sends no body; use POST, PUT, "
              "PATCH or DELETE")
    if step["request_timeout_s"] > step["timeout_s"]:
        field = "request_timeout" if raw_keys else "request_timeout_s"
        _fail(index, name, field, f"{step['request_timeout_s']} seconds is longer than the "
              f"step's timeout ({step['timeout_s']} seconds)")


def _check_undo(step: Mapping[str, Any], index: int | None) -> None:
    """An undo step runs a script only as a sql ``down`` (engine, connection) or a shell
    ``rollback`` (interpreter, and optionally env, args, secrets_via)."""
    name = step["name"]
    runs = [key for key in ("engine", "interpreter") if key in step]
    if len(runs) > 1:
        _fail(index, name, "interpreter", "an undo step runs a sql down script (engine) or a "
              "shell rollback script (interpreter), not both")
    if runs and "script" not in step:
        _fail(index, name, "script", f"is missing; {runs[0]} needs the script to run")
    if "script" in step and not runs:
        _fail(index, name, "script", "needs engine (a sql down script) or interpreter (a "
              "shell rollback script)")
    if "engine" in step and "connection" not in step:
        _fail(index, name, "connection", "is missing; a sql down script needs its connection")
    for key in ("env", "args", "secrets_via"):
        if key in step and "interpreter" not in step:
            _fail(index, name, key, "is only for a shell rollback script (with interpreter)")


def secret_env_name(name: str) -> str:
    """The environment variable a shell step gets secret ``name`` in (docs §3.6):
    ``TIANGONG_SECRET_`` + the name upper-cased, every character but A-Z and 0-9 made ``_``.
    """
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def validate_step(step: Mapping[str, Any], index: int | None = None) -> None:
    """Check a normalized step (as found in a verified manifest) — docs §3.3.

    The step must have exactly the normalized keys of its kind (optional ones may be left
    out), each with a valid value. File references are checked for syntax only.

    Raises:
        ReleaseFormatError: naming the step (and its number when ``index`` is given) and
            the field.
    """
    if not isinstance(step, Mapping):
        raise ReleaseFormatError(f"{_where(index, None)}: must be a mapping, not {_type(step)}")
    name = step.get("name")
    try:
        _step_name(name)
    except _FieldError as exc:
        _fail(index, None, "name", "is missing" if "name" not in step else str(exc))
    kind = _check_keys(step, index, name, _COMMON_NORM, _KIND_NORM)
    checks: dict[str, _Check] = {
        "timeout_s": _seconds,
        "on_failure": _choice(ON_FAILURE),
        "secrets": _secrets,
    }
    if "after" in step:
        checks["after"] = _after
    raw_checks = _raw_checks(None)[kind]
    for key in _KIND_NORM[kind]:
        checks[key] = _seconds if key in _DURATION_KEYS.values() else raw_checks[key]
    for key, check in checks.items():
        if key not in step:
            if key in _OPTIONAL_NORM[kind]:
                continue
            _fail(index, name, key, "is missing")
        value = step[key]
        try:
            normalized = check(value)
        except _FieldError as exc:
            _fail(index, name, key, str(exc))
        if normalized != value or type(normalized) is not type(value):
            _fail(index, name, key, f"{_show(value)} is not in normalized form")
    _check_combinations(step, index, raw_keys=False)


def referenced_files(step: Mapping[str, Any]) -> list[str]:
    """The release files a normalized step uses (its script and undo script, its manifests,
    its wheel or its source), in order."""
    kind = step.get("kind")
    if kind == "k8s":
        return list(step.get("manifests", []))
    keys = {"agent-upgrade": ("wheel",), "file": ("source",), "http": ("body",)}.get(
        str(kind), ("script", "down", "rollback", "check")
    )
    return [step[key] for key in keys if isinstance(step.get(key), str)]


def undo_support(step: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a rollback can undo a normalized step, and why (docs/release-format.md §3.8).

    Returns ``(True, how)`` or ``(False, why not)``, in words for the release page.
    """
    kind = step.get("kind")
    if kind == "k8s":
        return True, "the objects it applies over are recorded and restored; new ones deleted"
    if kind == "file":
        return True, "the previous file (or its absence) is recorded and restored"
    if kind == "sql":
        if isinstance(step.get("down"), str):
            return True, f"its down script {step['down']} is run"
        return False, "a sql step without a down script cannot be undone"
    if kind == "shell":
        if isinstance(step.get("rollback"), str):
            return True, f"its rollback script {step['rollback']} is run"
        return False, "a shell step without a rollback script cannot be undone"
    if kind == "http":
        return False, "an http request cannot be taken back (send the reverse call in a step)"
    if kind == "undo":
        return False, "a rollback is not undone (deploy the release again instead)"
    return False, "an agent upgrade is not undone by a rollback (ship the older wheel)"


#: The connection type each step kind (and SQL engine) needs.
_CONNECTION_TYPE = {("sql", "postgres"): "postgres", ("sql", "mysql"): "mysql",
                    ("k8s", None): "kubernetes", ("http", None): "http"}


def needed_connection_type(step: Mapping[str, Any]) -> str | None:
    """The site connection type a normalized step needs (``sql`` + ``postgres`` →
    ``"postgres"``, ``mysql`` → ``"mysql"``, ``k8s`` → ``"kubernetes"``, ``http`` →
    ``"http"``), or None."""
    kind = str(step.get("kind"))
    return _CONNECTION_TYPE.get((kind, step.get("engine") if kind == "sql" else None))
