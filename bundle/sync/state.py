"""The body of a STATE message: what an agent says about itself (docs/live-protocol.md §3.1).

An agent sends its **inventory** (docs/agent.md, "Inventory": version, OS, free disk, CPU,
memory, connection names and types — never their details or secrets —, step kinds, time
zone, the windows it last received) and the **holds** it is enforcing (bundles it accepted
and holds for a maintenance window, a freeze, or an earlier held bundle) right after WELCOME
and then with a heartbeat whenever they changed.

:func:`check_state` is the hub's rule for that body: a strict-JSON object holding exactly the
keys below, every value of its type and within its bound. Anything else is ``malformed``: the
hub stores nothing of it and closes the connection. The body names no agent: the hub files
it under the agent that authenticated the connection, so an agent can only ever describe
itself.

Pure: no I/O, no state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from bundle.limits import KiB
from bundle.sync.errors import MalformedError

__all__ = ["HOLD_KEYS", "INVENTORY_KEYS", "MAX_CONNECTIONS", "MAX_HOLDS", "MAX_HOLD_TEXT",
           "MAX_STATE_BYTES", "MAX_STEP_KINDS", "check_state"]

MAX_STATE_BYTES = 64 * KiB  # bytes of one STATE body (strict JSON)
MAX_CONNECTIONS = 256  # connection names in one inventory
MAX_STEP_KINDS = 64  # step kinds in one inventory
MAX_HOLDS = 64  # holds listed in one STATE
MAX_HOLD_TEXT = 500  # characters of one hold's reason
_SHORT = 64  # characters: versions, time zones, connection types
_LONG = 200  # characters: the OS, the window description
_INT64 = 2**63 - 1

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_CODE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_CONN_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,128}")

Check = Callable[[object, str], None]


def _bad(where: str, why: str) -> MalformedError:
    return MalformedError(f"STATE {where} {why}", remote_text=f"STATE {where} {why}"[:200])


def _text(limit: int, *, null: bool = True) -> Check:
    def check(value: object, where: str) -> None:
        if value is None and null:
            return
        if not isinstance(value, str) or len(value) > limit:
            raise _bad(where, f"must be a string of at most {limit} characters"
                       + (" or null" if null else ""))

    return check


def _count(*, null: bool = True) -> Check:
    def check(value: object, where: str) -> None:
        if value is None and null:
            return
        if type(value) is not int or not 0 <= value <= _INT64:
            raise _bad(where, "must be a non-negative integer" + (" or null" if null else ""))

    return check


def _match(pattern: re.Pattern[str], what: str) -> Check:
    def check(value: object, where: str) -> None:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _bad(where, f"must be {what}")

    return check


def _format(value: object, where: str) -> None:
    if value != 1 or type(value) is not int:
        raise _bad(where, "must be 1")


def _connections(value: object, where: str) -> None:
    if not isinstance(value, dict) or len(value) > MAX_CONNECTIONS:
        raise _bad(where, f"must be an object of at most {MAX_CONNECTIONS} names")
    for name, kind in value.items():
        _match(_CONN_NAME, "1-128 printable characters")(name, f"{where} name")
        _text(_SHORT, null=False)(kind, f"{where}[{name[:40]!r}]")


def _step_kinds(value: object, where: str) -> None:
    if not isinstance(value, list) or len(value) > MAX_STEP_KINDS:
        raise _bad(where, f"must be a list of at most {MAX_STEP_KINDS} kinds")
    for kind in value:
        _match(_CODE, "a short lowercase step kind")(kind, where)


#: Exactly these keys, each with its rule (docs/agent.md, "Inventory").
INVENTORY_KEYS: Mapping[str, Check] = {
    "format": _format,
    "agent_version": _text(_SHORT),
    "os": _text(_LONG),
    "free_disk_bytes": _count(),
    "cpus": _count(),
    "memory_bytes": _count(),
    "connections": _connections,
    "step_kinds": _step_kinds,
    "time_zone": _text(_SHORT),
    "window": _text(_LONG),
}

#: Exactly these keys per hold.
HOLD_KEYS: Mapping[str, Check] = {
    "bundle_id": _match(_ID, "a bundle id"),
    "sequence": _count(null=False),
    "kind": _match(_CODE, "a short lowercase hold kind"),
    "text": _text(MAX_HOLD_TEXT, null=False),
    "until": _count(),
}


def _exact(value: object, rules: Mapping[str, Check], where: str) -> None:
    if not isinstance(value, dict):
        raise _bad(where, "must be an object")
    if set(value) != set(rules):
        missing = sorted(set(rules) - set(value))
        extra = sorted(str(k)[:40] for k in set(value) - set(rules))[:5]
        why = "; ".join(filter(None, [f"lacks {', '.join(missing)}" if missing else "",
                                      f"has unexpected {', '.join(extra)}" if extra else ""]))
        raise _bad(where, why)
    for key, rule in rules.items():
        rule(value[key], f"{where}.{key}")


def check_state(value: object) -> dict[str, Any]:
    """``value`` (the parsed STATE body) if it is a valid state.

    Raises:
        MalformedError: not ``{"inventory": {...}, "holds": [...]}`` with exactly the keys of
            :data:`INVENTORY_KEYS` and :data:`HOLD_KEYS`, or a value of the wrong type or
            over its bound; the message names the field.
    """
    _exact(value, {"inventory": lambda v, w: _exact(v, INVENTORY_KEYS, w),
                   "holds": _holds}, "body")
    assert isinstance(value, dict)
    return value


def _holds(value: object, where: str) -> None:
    if not isinstance(value, list) or len(value) > MAX_HOLDS:
        raise _bad(where, f"must be a list of at most {MAX_HOLDS} holds")
    for i, hold in enumerate(value):
        _exact(hold, HOLD_KEYS, f"{where}[{i}]")
