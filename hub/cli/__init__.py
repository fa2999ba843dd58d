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
"""

from __future__ import annotations

from hub.cli import (  # noqa: F401 - each module registers its commands on the group
    audit,
    backup,
    channels,
    deployments,
    exchange,
    notifications,
    plans,
    releases,
    rollouts,
    schedule,
    secrets,
    serve,
    setup,
    sites,
    templates,
    trust,
    users,
    windows,
)
from hub.cli.base import hub

__all__ = ["hub"]
