"""Typed parameters of job templates (issue 16 §2) and how their values reach a run, without
I/O and without a database: :class:`ParamSpec` parses a definition's ``[[params]]``,
:func:`check_values` turns the operator's ``name=value`` texts into typed values or refuses
with an error naming the parameter, :func:`render_sql` and :func:`shell_env` put the values
where the step reads them.

How values are substituted (docs/operations.md "Job templates"):

* **SQL** — a placeholder ``{{name}}`` in the template's file is replaced by a *literal* of
  the value, never by its raw text: an ``int`` by its decimal digits, a ``bool`` by
  ``TRUE``/``FALSE``, a ``string``/``enum`` by a string literal built for the engine:
  PostgreSQL a dollar-quoted string ``$tg$…$tg$`` whose tag does not occur in the value
  (the value cannot close it, whatever ``standard_conforming_strings`` says); MySQL/MariaDB
  a hexadecimal literal ``_utf8mb4 X'…'`` (no quote or backslash to escape, whatever
  ``sql_mode`` says). A placeholder is a value, never an identifier or a piece of SQL.
  ``secret-ref`` parameters are refused for SQL templates (the hub never sees a secret's
  value; put it in the connection).
* **k8s** — a placeholder is a whole value alone on its line of the manifest
  (:func:`misplaced_yaml_placeholder`) and becomes :func:`yaml_literal`: a double-quoted
  scalar whose every character but letters, digits and ``._/+=-`` is an escape.
* **http** — a placeholder in the URL's path or query becomes :func:`url_text`
  (percent-encoded), one in the (JSON) body :func:`json_literal`.
* **shell** — nothing is spliced into the script: each value is an environment variable of
  the step, ``PARAM_<NAME>`` (upper case), which the script reads as ``"$PARAM_DAYS"``; a
  ``secret-ref``'s secret is added to the step's ``secrets`` and its variable holds the
  secret's name.

A ``secret-ref`` lists in ``choices`` the secrets a run may name (required when a template
is added): without it, whoever may run the template could hand any secret of the
environment to the template's step (to its URL, its script). :func:`secret_not_allowed`
says which value is not allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from agent.executors.sqlsplit import Dialect, SqlSplitError, code_starts
from hub.errors import ValidationError

__all__ = [
    "MAX_PARAMS",
    "PARAM_TYPES",
    "ParamSpec",
    "check_values",
    "json_literal",
    "misplaced_placeholder",
    "misplaced_yaml_placeholder",
    "parse_params",
    "placeholders",
    "render",
    "render_sql",
    "secret_not_allowed",
    "shell_env",
    "url_text",
    "yaml_literal",
]

PARAM_TYPES = ("string", "int", "bool", "enum", "secret-ref")
MAX_PARAMS = 32  # parameters per template
MAX_STRING_CHARS = 4096  # characters of a string value (a step's env value, release-format §3)
MAX_CHOICES = 64  # values an enum offers
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SECRET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # release-format §3 (secrets)
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]*)\s*\}\}")
_INT = re.compile(r"[+-]?[0-9]{1,18}")
_TRUE, _FALSE = frozenset({"true", "yes", "1", "on"}), frozenset({"false", "no", "0", "off"})


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter. ``default`` None: required."""

    name: str
    type: str
    description: str = ""
    default: Any = None
    choices: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None
    max_length: int = MAX_STRING_CHARS
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        return self.default is None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "type": self.type}
        for key in ("description", "default", "min", "max"):
            value = getattr(self, key)
            if value not in (None, ""):
                doc[key] = value
        if self.choices:
            doc["choices"] = list(self.choices)
        if self.type == "string" and self.max_length != MAX_STRING_CHARS:
            doc["max_length"] = self.max_length
        return doc

    def describe(self) -> str:
        """``days (int 1..365, default 30)``."""
        text = f"{self.name} ({self.type}"
        if self.type == "int" and (self.min is not None or self.max is not None):
            low = "" if self.min is None else str(self.min)
            text += f" {low}..{'' if self.max is None else self.max}"
        if self.choices:
            text += f": {'|'.join(self.choices)}"
        text += ", required)" if self.required else f", default {self.default})"
        return text


def _where(where: str, index: int, name: Any = None) -> str:
    return f"{where}: parameter {index + 1}" + (f" ({name})" if isinstance(name, str) else "")


def _spec(raw: Any, where: str, index: int) -> ParamSpec:
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{_where(where, index)}: must be a table")
    name = raw.get("name")
    here = _where(where, index, name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(f"{here}: name must be 1-32 lower-case letters, digits or '_', "
                              "starting with a letter")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise ValidationError(f"{here}: type must be one of {', '.join(PARAM_TYPES)}, "
                              f"not {kind!r}")
    unknown = set(raw) - {"name", "type", "description", "default", "choices", "min", "max",
                          "max_length"}
    if unknown:
        raise ValidationError(f"{here}: unknown key(s) {', '.join(sorted(unknown))}")
    choices = raw.get("choices", [])
    if kind == "enum":
        if (not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES
                or not all(isinstance(c, str) and 0 < len(c) <= 256 for c in choices)
                or len(set(choices)) != len(choices)):
            raise ValidationError(f"{here}: an enum needs 'choices', 1-{MAX_CHOICES} distinct "
                                  "non-empty strings")
    elif kind == "secret-ref" and "choices" in raw:
        # The secrets a run may name (a stored template of before this rule has none: its
        # runs are refused, hub.services.templates.instantiate).
        if (not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES
                or not all(isinstance(c, str) and _SECRET.fullmatch(c) for c in choices)
                or len(set(choices)) != len(choices)):
            raise ValidationError(f"{here}: a secret-ref's 'choices' are the secrets a run may "
                                  f"name: 1-{MAX_CHOICES} distinct secret names (letters, "
                                  "digits, '_' and '-', at most 64 characters)")
    elif "choices" in raw:
        raise ValidationError(f"{here}: only an enum or a secret-ref takes 'choices'")
    bounds = {k: raw.get(k) for k in ("min", "max")}
    for key, value in bounds.items():
        if value is not None and (kind != "int" or type(value) is not int):
            raise ValidationError(f"{here}: '{key}' is an integer, for an int parameter only")
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        raise ValidationError(f"{here}: min {bounds['min']} is above max {bounds['max']}")
    max_length = raw.get("max_length", MAX_STRING_CHARS)
    if "max_length" in raw and (kind != "string" or type(max_length) is not int
                                or not 1 <= max_length <= MAX_STRING_CHARS):
        raise ValidationError(f"{here}: 'max_length' is 1..{MAX_STRING_CHARS}, for a string "
                              "parameter only")
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > 1024:
        raise ValidationError(f"{here}: description must be a string of at most 1024 "
                              "characters")
    spec = ParamSpec(name, kind, description, None, tuple(choices), bounds["min"],
                     bounds["max"], max_length)
    default = raw.get("default")
    if default is not None:
        # A default obeys the parameter's own rules (checked like a value given).
        text = str(default).lower() if isinstance(default, bool) else str(default)
        spec = ParamSpec(spec.name, spec.type, spec.description,
                         _typed(spec, text, f"{here}: default"), spec.choices, spec.min,
                         spec.max, spec.max_length)
        if spec.type == "secret-ref" and spec.choices and default not in spec.choices:
            raise ValidationError(f"{here}: default: secret {text[:64]!r} is not one of its "
                                  f"choices ({', '.join(spec.choices)})")
    return spec


def parse_params(raw: Any, where: str) -> tuple[ParamSpec, ...]:
    """The ``[[params]]`` of a definition (``where`` names it in errors).

    Raises:
        ValidationError: naming the parameter, its number and the rule.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_PARAMS:
        raise ValidationError(f"{where}: params must be a list of at most {MAX_PARAMS} tables")
    specs = tuple(_spec(r, where, i) for i, r in enumerate(raw))
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValidationError(f"{where}: parameter {', '.join(dupes)} is declared twice")
    return specs


def _typed(spec: ParamSpec, text: str, here: str) -> Any:
    """``text`` as ``spec``'s type, or ValidationError naming ``here``."""
    if "\x00" in text:
        raise ValidationError(f"{here}: contains a NUL character")
    if spec.type == "int":
        if not _INT.fullmatch(text.strip()):
            raise ValidationError(f"{here}: {text[:40]!r} is not an integer")
        value = int(text.strip())
        if spec.min is not None and value < spec.min:
            raise ValidationError(f"{here}: {value} is below the minimum {spec.min}")
        if spec.max is not None and value > spec.max:
            raise ValidationError(f"{here}: {value} is above the maximum {spec.max}")
        return value
    if spec.type == "bool":
        low = text.strip().lower()
        if low not in _TRUE | _FALSE:
            raise ValidationError(f"{here}: {text[:40]!r} is not true or false")
        return low in _TRUE
    if spec.type == "enum":
        if text not in spec.choices:
            raise ValidationError(f"{here}: {text[:40]!r} is not one of "
                                  f"{', '.join(spec.choices)}")
        return text
    if spec.type == "secret-ref":
        if not _SECRET.fullmatch(text):
            raise ValidationError(f"{here}: {text[:40]!r} is not a secret name (letters, "
                                  "digits, '_' and '-', at most 64 characters)")
        return text  # whether the template allows it: secret_not_allowed
    if len(text) > spec.max_length:
        raise ValidationError(f"{here}: {len(text)} characters, more than {spec.max_length}")
    return text


def check_values(specs: Sequence[ParamSpec], given: Mapping[str, str],
                 where: str) -> dict[str, Any]:
    """Every declared parameter's typed value: ``given`` (name -> text as typed) or the
    default. ``where`` (``template purge-sessions v2``) starts every error.

    Raises:
        ValidationError: an unknown parameter, a missing required one, or a value that is
        not of its type or out of its range — naming the parameter.
    """
    known = {s.name: s for s in specs}
    unknown = sorted(set(given) - set(known))
    if unknown:
        takes = ", ".join(known) or "no parameters"
        raise ValidationError(f"{where}: unknown parameter {', '.join(unknown)} (it takes "
                              f"{takes})")
    values: dict[str, Any] = {}
    for spec in specs:
        here = f"{where}: parameter {spec.name}"
        if spec.name in given:
            values[spec.name] = _typed(spec, given[spec.name], here)
        elif spec.required:
            raise ValidationError(f"{here} is required ({spec.describe()})")
        else:
            values[spec.name] = spec.default
    return values


def secret_not_allowed(specs: Sequence[ParamSpec], values: Mapping[str, Any],
                       where: str) -> tuple[ParamSpec, str, str] | None:
    """The first secret-ref parameter whose value (a secret's name, from
    :func:`check_values`) is not one of the parameter's ``choices`` — the secrets the
    template's author allowed — as ``(spec, secret, message)``; None when every one is
    allowed. A parameter without ``choices`` (a template stored before they were required)
    allows none."""
    for spec in specs:
        if spec.type != "secret-ref":
            continue
        secret = str(values[spec.name])
        if not spec.choices:
            return spec, secret, (
                f"{where}: parameter {spec.name}: secret {secret!r} refused: this version "
                "lists no secrets a run may name (it was added before a secret-ref needed "
                "'choices'); add a new version whose parameter lists them")
        if secret not in spec.choices:
            return spec, secret, (
                f"{where}: parameter {spec.name}: secret {secret!r} is not one the template "
                f"allows ({', '.join(spec.choices)})")
    return None


def placeholders(text: str) -> list[str]:
    """The names of the ``{{name}}`` placeholders of ``text``, in order of first use."""
    return list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(text)))


def _word_char(ch: str) -> bool:
    """A character that continues an identifier or a number (``$`` too, on PostgreSQL)."""
    return ch.isalnum() or ch in "_$" or ord(ch) > 127


def misplaced_placeholder(text: str, engine: str) -> str | None:
    """Why a placeholder of SQL template ``text`` does not stand where a value may — inside
    quoted text, a comment or a dollar-quoted body, or glued to a word — or None when each
    does. A value's literal is safe only in SQL code: inside ``'…'``, ``-- …`` or ``$$…$$``
    its text would be read as raw characters (a quote or a new line ends that context and the
    rest runs as SQL), and after ``tbl_`` PostgreSQL reads ``$tg$…`` as part of the name."""
    dialect: Dialect = "mysql" if engine == "mysql" else "postgres"
    try:
        code = code_starts(text, dialect)
    except SqlSplitError as exc:
        return f"cannot be read as SQL: {exc}"
    for m in _PLACEHOLDER.finditer(text):
        start, end = m.span()
        line = text.count("\n", 0, start) + 1
        where = f"line {line}: placeholder {m.group(0)}"
        if start not in code:
            return (f"{where} is inside quoted text, a comment or a dollar-quoted body; a "
                    "placeholder is a whole value in SQL code (write owner = {{who}}, not "
                    "owner = '{{who}}')")
        if (start > 0 and _word_char(text[start - 1])) or \
                (end < len(text) and _word_char(text[end])):
            return (f"{where} is joined to a word or number; a placeholder is a whole value, "
                    "never part of a name")
    return None


def _pg_string(value: str) -> str:
    tag = "tg"
    while f"${tag}$" in value or value.endswith(f"${tag}"):
        tag += "_"
    return f"${tag}${value}${tag}$"


def _sql_literal(value: Any, engine: str) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return f"({value})" if value < 0 else str(value)  # never "--5" after a minus
    text = str(value)
    if engine == "mysql":
        return f"_utf8mb4 X'{text.encode('utf-8').hex()}'"
    return _pg_string(text)


def render_sql(text: str, values: Mapping[str, Any], engine: str) -> str:
    """``text`` with each ``{{name}}`` replaced by the literal of ``values[name]`` for
    ``engine`` (``postgres`` or ``mysql``); the caller checked every placeholder names a
    parameter.

    Raises:
        ValidationError: a placeholder does not stand where a value may
            (:func:`misplaced_placeholder`; a template stored before that rule).
    """
    problem = misplaced_placeholder(text, engine)
    if problem is not None:
        raise ValidationError(f"the SQL file: {problem}")
    return _PLACEHOLDER.sub(lambda m: _sql_literal(values[m.group(1)], engine), text)


def shell_env(values: Mapping[str, Any]) -> dict[str, str]:
    """The step's environment variables: ``PARAM_<NAME>`` -> the value as text."""
    out = {}
    for name, value in values.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out[f"PARAM_{name.upper()}"] = text
    return out


_YAML_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/+=-")
#: a line whose one placeholder is a whole YAML value: ``key: {{p}}``, ``- {{p}}`` or
#: ``- key: {{p}}`` (a trailing comment allowed)
_YAML_VALUE_LINE = re.compile(
    r"[ \t]*(?:(?:-[ \t]+)+|(?:-[ \t]+)*[A-Za-z0-9_./-]+:[ \t]+)"
    r"\{\{\s*[^{}\s]*\s*\}\}[ \t]*(?:#.*)?")


def _yaml_char(ch: str) -> str:
    if ch in _YAML_PLAIN:
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def yaml_literal(value: Any) -> str:
    """A YAML scalar standing for exactly ``value``: an int its digits, a bool
    ``true``/``false``, text a double-quoted scalar in which every character but letters,
    digits and ``._/+=-`` is an escape (``\\x27`` for a quote, ``\\x0a`` for a new line,
    ``\\x20`` for a space): no quote, line break, ``#``, ``:`` or bracket stays raw, so the
    value cannot end the scalar, start a comment, a key or a new line, in whatever context
    it stands."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + "".join(_yaml_char(ch) for ch in str(value)) + '"'


def misplaced_yaml_placeholder(text: str) -> str | None:
    """Why a placeholder of a Kubernetes manifest ``text`` is not a whole value of its own
    line (``replicas: {{replicas}}``, ``- {{host}}``), or None when each is."""
    for number, line in enumerate(text.splitlines(), start=1):
        found = _PLACEHOLDER.findall(line)
        if found and (len(found) > 1 or not _YAML_VALUE_LINE.fullmatch(line)):
            return (f"line {number}: placeholder {{{{{found[0]}}}}} is not a whole value; write "
                    "it alone after the key or the dash (image: {{image}}, - {{host}}), never "
                    "inside quotes, a longer text or a comment")
    return None


def json_literal(value: Any) -> str:
    """A JSON value standing for exactly ``value`` (a string is quoted and escaped)."""
    return json.dumps(value, ensure_ascii=True)


def url_text(value: Any) -> str:
    """``value`` percent-encoded for a URL's path or query (nothing left that ends a
    segment, a query parameter or the URL).

    Raises:
        ValidationError: the value is ``.`` or ``..`` (a dot-segment of its own).
    """
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if text in (".", ".."):
        raise ValidationError(f"a URL value may not be {text!r}: as a path segment it names "
                              "the parent or this segment, another resource than the "
                              "template's")
    return quote(text, safe="")


def render(text: str, values: Mapping[str, Any], literal: Callable[[Any], str]) -> str:
    """``text`` with each ``{{name}}`` replaced by ``literal(values[name])``; the caller
    checked every placeholder names a parameter."""
    return _PLACEHOLDER.sub(lambda m: literal(values[m.group(1)]), text)
