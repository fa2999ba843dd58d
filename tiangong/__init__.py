"""Tiangong: the ``tiangong`` command root.

This tiny package belongs to no component: it only holds the console entry point, which must
import in every install (agent-only, hub, dev). Each command group is loaded lazily so that an
agent-only install can run ``tiangong agent ...`` without Flask or SQLAlchemy present.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
