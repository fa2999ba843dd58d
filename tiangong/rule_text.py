"""What ``tiangong hub windows|freezes`` and ``tiangong remote windows|freezes`` print, in one
place so that the two say the same words (only the standard library: ``tiangong remote``
has no hub extra). ``row`` is a rule as ``hub.services.windows.rule_json`` gives it (the
CLI's and the API's JSON)."""

from __future__ import annotations

from typing import Any

__all__ = ["RULE_COLUMNS", "added", "columns", "ended", "removed"]

RULE_COLUMNS = ("id", "environment", "product", "description", "created_by")


def columns(kind: str) -> list[str]:
    """The table columns of a listing of ``kind`` (freezes: when and by whom ended)."""
    return [*RULE_COLUMNS, *(("ended_at", "ended_by") if kind == "freeze" else ())]


def added(kind: str, row: dict[str, Any]) -> str:
    return (f"{kind} {row['id']} added: {row['description']} (environment "
            f"{row['environment'] or 'every'}, product {row['product'] or 'every'})")


def removed(kind: str, rule_id: int, row: dict[str, Any]) -> str:
    return f"{kind} {rule_id} removed ({row['description']})"


def ended(rule_id: int, row: dict[str, Any]) -> str:
    return f"freeze {rule_id} ended ({row['description']})"
