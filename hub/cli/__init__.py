"""``tiangong hub …``: every hub service action as a command, one module per concept.

``base`` holds the ``hub`` group, its global options and the helpers every command uses
(one transaction per command, tables or ``--json``); the other modules attach their commands
to it when imported: ``setup`` (init, tls), ``serve`` (serve, live), ``users``, ``releases``
(products, releases), ``sites`` (environments, agents), ``channels`` (channels, promotion,
recall, subscriptions), ``deployments``, ``exchange``
(export, import), ``audit``, ``backup`` (backup, restore), ``windows`` (windows, freezes,
deployments why/override), ``plans`` (releases plan, releases plans), ``schedule``
(scheduled exports), ``notifications``. Commands only translate: every
rule is in ``hub/services``.

A command's modules are imported only when the command is looked up
(``base.COMMAND_MODULES``): a process pays for the commands it runs, not for all of them.
:func:`load_all` imports every module (for code that walks the whole tree).
"""

from __future__ import annotations

import importlib

from hub.cli.base import COMMAND_MODULES, hub

__all__ = ["hub", "load_all"]


def load_all() -> None:
    """Import every command module, so that ``hub.commands`` holds every command."""
    for modules in COMMAND_MODULES.values():
        for module in modules:
            importlib.import_module(f"hub.cli.{module}")
