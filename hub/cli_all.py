"""The complete ``tiangong hub`` command (the ``hub.cli`` package). The root CLI loads this
module.

The hub's dependencies are imported here first, so that on an agent-only install the root
CLI can say which extra to install instead of failing later with an ImportError.
"""

from __future__ import annotations

import flask  # noqa: F401 - presence check for the hub extra
import sqlalchemy  # noqa: F401 - presence check for the hub extra

from hub.cli import hub

__all__ = ["hub"]
