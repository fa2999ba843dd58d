"""A test hook that makes a hub process die at a named durable transition.

``TIANGONG_CRASH_AT=<point>[:<nth>]``, read once when the process starts (this module is
imported): at the ``nth`` time (default 1) the process reaches crash point ``point``, it
kills itself with ``SIGKILL`` — no ``finally``, no rollback, no clean-up: as far as the hub
can tell, a power cut. The agent has the same convention (``agent.faults``), through the
one hook of ``bundle.crashhook``: the hub's points all start with ``hub.``, and a value naming
an agent's point is ignored here (and the other way round), so one environment can drive
both. The points are :data:`CRASH_POINTS` (docs/hub.md, "Crash points").

Unset (production), each hook is one comparison with ``None``. This module does not read
the environment again after start-up and offers no other way to set the hook.
"""

from __future__ import annotations

import os

from bundle.crashhook import CrashHook

__all__ = ["CRASH_POINTS", "crash_point"]

#: Every durable transition of the hub's export, import and audit log.
CRASH_POINTS: dict[str, str] = {
    "hub.export-claimed": "a deployment claimed and its bundle's sequence, id, times and "
    "file name committed (bundle.claimed), nothing on the media yet",
    "hub.export-writing": "the bundle being written: its spool and a temporary file on the "
    "media, no final name yet",
    "hub.export-frame-caching": "a payload's compressed frame written to a temporary file "
    "in the release store's frame cache and fsynced, not renamed to its entry",
    "hub.export-synced": "a batch's bundles written under temporary names, fsynced and "
    "read back, none renamed yet",
    "hub.export-renamed": "the bundle under its final name on the media, the hub still says "
    "exporting",
    "hub.export-recorded": "the deployment committed as exported (bundle.written), the "
    "media index not written yet",
    "hub.export-indexing": "the media index being rewritten: its lock file held and a "
    "temporary copy written, not renamed",
    "hub.live-delivering": "the live server: bundles their agents confirmed moved from the "
    "spool into sent/ and the spool directories fsynced, their delivered record not "
    "committed",
    "hub.plan-written": "hub releases plan: the plan's sequence committed (its row, no "
    "files yet) and its file written under its final name, the files and audit event not "
    "committed",
    "hub.import-copies-synced": "a batch's verified private copies (.incoming-*) fsynced in "
    "the results directory, not yet renamed; the batch before it may be recorded or "
    "committed (the import is pipelined)",
    "hub.import-stored": "a batch of verified results renamed into the results directory "
    "and fsynced, the database transaction not committed",
    "hub.import-committed": "a batch of results committed (deployments, attempts, events)",
    "hub.rollout-batch-queued": "a rollout's next batch recorded started and its "
    "deployments queued, not committed",
    "hub.rollback-created": "a rollout's automatic rollback: a rollback release created and "
    "submitted, not yet approved by inheritance nor queued, nothing committed",
    "hub.audit-appended": "an audit event inserted in its transaction, not committed",
    "hub.checkpoint-signed": "an audit checkpoint signed and inserted, not committed",
    "hub.root-installing": "hub keys install-root: the old and new root kept under roots/, "
    "root.json still the old version, the root.install event not committed",
    "hub.notify-sending": "a notification read from the outbox and signed, the webhook "
    "not called yet",
    "hub.notify-sent": "a webhook answered 2xx, the notification not committed delivered",
    "hub.root-installed": "hub keys install-root: root.json replaced by the new version, the "
    "root.install event not committed",
    "hub.schedule-claimed": "an export schedule's fire time claimed (committed), its export "
    "not started",
}


_CRASH = CrashHook(os.environ.get("TIANGONG_CRASH_AT"), CRASH_POINTS, hub=True)


def crash_point(point: str) -> None:
    """Mark that the process has reached crash point ``point``; die there if asked to."""
    _CRASH.hit(point)
