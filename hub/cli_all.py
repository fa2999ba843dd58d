"""The complete ``tiangong hub`` command (the ``hub.cli`` package). The root CLI loads this
module.

The hub's dependencies are looked for here first (found, not imported: ``hub users list``
needs no Flask), so that on an agent-only install the root CLI can say which extra to
install instead of failing later with an ImportError.
"""

from __future__ import annotations

from importlib.util import find_spec

for _name in ("flask", "sqlalchemy"):  # presence checks for the hub extra
    if find_spec(_name) is None:
        raise ModuleNotFoundError(f"No module named {_name!r}", name=_name)

from hub.cli import hub  # noqa: E402 - after the presence checks

__all__ = ["hub"]
