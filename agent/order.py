"""The order in which the agent applies inbox bundles: by sequence, never by copy order.

Files reach the inbox in any order and under any names (``x-1.0.10`` sorts before ``x-1.0.9``;
a stick may carry bundle 11 while bundle 10 is still on another one). :class:`Sequencer` makes
the agent apply them in chain order (docs/bundle-format.md §9.7, docs/agent.md "Order"):

1. **Peek.** Every ready item is authenticated first (head and signature only, §9 steps 1–3,
   nothing staged), which gives its verified ``(root_version, sequence)`` and the hub's signed
   lost-bundle decisions it carries.
2. **Sort** by that position; items that fail authentication go first (they are refused with
   their own reason when processed).
3. **Process** in that order. The verifier calls :meth:`Sequencer.admit` before it reads any
   payload byte: a bundle whose predecessor has not been applied is **held** — left where it
   is, in the inbox, untouched — and the agent says what it waits for, once, in its log
   (``waiting for sequence 9, hello 1.0.9, exported 2026-12-01 by carol``) and in ``agent
   status``. A bundle the hub declared lost is refused with that reason and a signed result.
4. After any bundle is applied, held items are tried again in the same pass.

A good bundle that cannot be staged for lack of space is held the same way (not quarantined):
the message says how much is needed and how much is free.

This module decides order and holding only; verifying, moving files and running are the
service's (``agent.service``). Decisions are taken only from verified manifests: those in the
journal (already accepted) and those of inbox bundles whose signatures verified in this pass.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agent.inbox import ReadyItem
from agent.journal import Journal
from bundle.chain import Position, collect_lost, declared_lost, missing_predecessor
from bundle.errors import BundleError, InsufficientSpaceError, PartsError, ReplayError
from bundle.limits import format_bytes
from bundle.manifest import MAX_LOST_ENTRIES, ChainInfo, LostBundle, Manifest
from bundle.parts import assign_parts, find_first_part
from bundle.printable import printable
from bundle.reader import AdmitFn, staging_needed
from signing.errors import KeyFileError
from signing.fileio import write_file_atomic

__all__ = ["Held", "HeldItem", "LostBundleError", "Sequencer", "describe_lost", "held_rows"]

log = logging.getLogger("tiangong.agent.inbox")


class Held(Exception):
    """Raised by :meth:`Sequencer.admit` to stop verification: the bundle must wait."""

    def __init__(self, reason: str, position: Position | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


class _Peeked(Exception):
    def __init__(self, manifest: Manifest) -> None:
        super().__init__("peeked")
        self.manifest = manifest


class LostBundleError(BundleError):
    """The hub declared this bundle lost or superseded; it is never applied (§9.7)."""

    check = "lost"


@dataclass(frozen=True)
class HeldItem:
    """A ready inbox item the agent keeps waiting, with the reason (for ``agent status``)."""

    name: str
    reason: str
    sequence: int | None = None


class _Outcome(Protocol):
    @property
    def status(self) -> str: ...


OutcomeT = TypeVar("OutcomeT", bound=_Outcome)


Verify = Callable[[ReadyItem, AdmitFn], Any]
"""``verify(item, admit)``: run the verifier on *item* with *admit* as its hook."""


def describe_lost(decision: LostBundle) -> str:
    """``bundle X (sequence 9, hello 1.0.9, exported …) was declared lost by … at …: why``."""
    b = decision.bundle
    when = _day_time(decision.at)
    return (f"bundle {b.bundle_id} ({b.describe()}) was declared lost by {decision.by} at "
            f"{when}: {decision.reason.strip()}; it was superseded and is never applied")


def _day_time(t: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


class Sequencer:
    """Orders and holds the inbox items of one agent (one loop owns one Sequencer).

    Args:
        journal: the agent's journal (accepted manifests carry earlier lost decisions).
        accepted: returns the accepted ``(root_version, sequence)`` right now.
        staging_dir: where bundles are staged; :meth:`survey` says when one would not fit.
        decisions_file: where lost decisions learnt from bundles that were *not* accepted
            (they let an earlier bundle through) are kept, so the lost bundle is refused
            with the hub's reason even after a restart.
    """

    def __init__(self, journal: Journal, accepted: Callable[[], Position],
                 staging_dir: Path | None = None, decisions_file: Path | None = None) -> None:
        self._journal = journal
        self._staging_dir = staging_dir
        self._decisions_file = decisions_file
        self._kept_lost: dict[Position, LostBundle] = self._load_decisions()
        self._accepted = accepted
        self._pending_lost: dict[Position, LostBundle] = {}
        self._journal_lost: dict[Position, LostBundle] = {}
        self._journal_seen: Position | None = None
        self._held: dict[str, HeldItem] = {}
        self._logged: dict[str, str] = {}

    # -- what is known --------------------------------------------------------------------

    def known_lost(self) -> dict[Position, LostBundle]:
        """Lost decisions from accepted bundles (journal) and from verified inbox bundles."""
        # Decisions in the journal change only when a bundle is accepted, which moves the
        # accepted position: re-read the manifests then, not on every look.
        position = self._accepted()
        if position != self._journal_seen:
            chains: list[ChainInfo | None] = []
            for rec in self._journal.bundles():
                value = rec.manifest.get("chain")
                if value is None:
                    continue
                try:
                    chains.append(ChainInfo.from_json(value))
                except BundleError:
                    continue
            self._journal_lost = collect_lost(chains)
            self._journal_seen = position
        return {**self._kept_lost, **self._journal_lost, **self._pending_lost}

    def _load_decisions(self) -> dict[Position, LostBundle]:
        if self._decisions_file is None:
            return {}
        try:
            rows = json.loads(self._decisions_file.read_text(encoding="utf-8"))
            return collect_lost([ChainInfo(None, tuple(LostBundle.from_json(r) for r in rows))])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, BundleError) as e:
            log.warning("cannot read %s (%s): lost-bundle decisions not yet in the journal "
                        "are forgotten", self._decisions_file, e)
            return {}

    def _keep_decisions(self) -> None:
        """Persist decisions that only waiting bundles carry (newest MAX_LOST_ENTRIES)."""
        new = {k: v for k, v in self._pending_lost.items()
               if k not in self._journal_lost and k not in self._kept_lost}
        if not new or self._decisions_file is None:
            return
        self._kept_lost.update(new)
        keep = sorted(self._kept_lost.values(), key=lambda d: d.bundle.position)
        keep = keep[-MAX_LOST_ENTRIES:]
        self._kept_lost = {d.bundle.position: d for d in keep}
        data = json.dumps([d.to_json() for d in keep], ensure_ascii=True).encode("ascii")
        try:
            write_file_atomic(self._decisions_file, data, overwrite=True)
        except (OSError, KeyFileError) as e:
            log.warning("cannot keep lost-bundle decisions in %s: %s", self._decisions_file, e)

    def held(self) -> list[HeldItem]:
        """Items held in the last pass, by name."""
        return sorted(self._held.values(), key=lambda h: h.name)

    # -- the verifier's hook ----------------------------------------------------------------

    def admit(self, manifest: Manifest, *, keep: bool = True) -> None:
        """The verifier's ``admit`` hook (§9.7): refuse a lost bundle, hold a bundle whose
        predecessor has not been applied, let everything else through. A bundle let through
        on the strength of decisions that only waiting bundles carry keeps them (``keep``).

        Raises:
            LostBundleError: the hub declared this bundle lost.
            Held: its predecessor is missing.
        """
        known = self.known_lost()
        decision = declared_lost(manifest, known)
        if decision is not None:
            raise LostBundleError(describe_lost(decision))
        if manifest.chain is not None:
            self._pending_lost.update(collect_lost([manifest.chain]))
        link = missing_predecessor(manifest, self._accepted(), known)
        if link is not None:
            raise Held(f"sequence {manifest.sequence} is waiting for {link.describe()} "
                       "(bundle " + link.bundle_id + "), which has not arrived: copy it into "
                       "the inbox, or have the hub declare it lost ('tiangong hub deployments "
                       "declare-lost')", (manifest.root_version, manifest.sequence))
        if keep:
            self._keep_decisions()

    def explain(self, exc: BundleError) -> BundleError:
        """A replay of a bundle the hub declared lost is refused for that reason."""
        if isinstance(exc, ReplayError) and isinstance(exc.manifest, Manifest):
            decision = declared_lost(exc.manifest, self.known_lost())
            if decision is not None:
                return LostBundleError(describe_lost(decision))
        return exc

    # -- one pass ---------------------------------------------------------------------------

    def arrange(self, items: Iterable[ReadyItem], verify: Verify) -> list[ReadyItem]:
        """*items* in chain order: authenticated positions first-come by position; items that
        do not authenticate first (they will be refused with their own reason)."""
        keyed: list[tuple[tuple[int, int, int], str, ReadyItem]] = []
        for item in items:
            position = self._peek(item, verify)
            key = (1, *position) if position is not None else (0, 0, 0)
            keyed.append((key, item.name, item))
        keyed.sort(key=lambda k: (k[0], k[1]))
        return [k[2] for k in keyed]

    def _peek(self, item: ReadyItem, verify: Verify) -> Position | None:
        def stop(manifest: Manifest) -> None:
            raise _Peeked(manifest)

        try:
            verify(item, stop)
        except _Peeked as peeked:
            m = peeked.manifest
            if m.chain is not None:
                self._pending_lost.update(collect_lost([m.chain]))
            return (m.root_version, m.sequence)
        except (BundleError, OSError):
            return None
        return None  # pragma: no cover - the hook always stops a verification that gets there

    def run(self, items: Iterable[ReadyItem], verify: Verify,
            process: Callable[[ReadyItem], OutcomeT],
            stopping: Callable[[], bool] = lambda: False) -> list[OutcomeT]:
        """Process *items* in chain order; retry held ones after each bundle applied.

        ``process`` returns an outcome whose ``status`` is ``"held"`` for an item that waits;
        the last such outcome of every item still held is returned too.
        """
        self._pending_lost = {}
        pending = self.arrange(items, verify)
        self._held = {}
        outcomes: list[OutcomeT] = []
        last_held: dict[str, OutcomeT] = {}
        progress = True
        while pending and progress and not stopping():
            progress = False
            still: list[ReadyItem] = []
            for item in pending:
                if stopping():
                    still.append(item)
                    continue
                outcome = process(item)
                if outcome.status == "held":
                    still.append(item)
                    last_held[item.name] = outcome
                    continue
                self._held.pop(item.name, None)
                last_held.pop(item.name, None)
                outcomes.append(outcome)
                progress = True
            pending = still
        outcomes.extend(last_held.values())
        self._logged = {k: v for k, v in self._logged.items() if k in last_held}
        return outcomes

    def survey(self, items: Iterable[ReadyItem], verify: Verify) -> list[HeldItem]:
        """What :meth:`run` would hold, without processing anything (for ``agent status``)."""
        self._pending_lost = {}
        held: list[HeldItem] = []
        for item in self.arrange(items, verify):
            try:
                verify(item, self._survey_hook)
            except Held as h:
                held.append(HeldItem(item.name, h.reason, h.position[1] if h.position else None))
            except (_Peeked, BundleError, OSError):
                continue
        self._held = {h.name: h for h in held}
        return held

    def _survey_hook(self, manifest: Manifest) -> None:
        self.admit(manifest, keep=False)
        if self._staging_dir is not None:
            need = staging_needed(manifest)
            free = shutil.disk_usage(self._staging_dir).free
            if free < need:
                raise Held(f"waiting for staging space: it needs {format_bytes(need)} free in "
                           f"{self._staging_dir}, but only {format_bytes(free)} is free",
                           (manifest.root_version, manifest.sequence))
        raise _Peeked(manifest)

    def part_problems(self, paths: list[Path], verify: Verify) -> str | None:
        """For a split bundle that still misses parts: the message naming every missing
        *and* damaged part (checked against the signed part digests), or None when every
        present part is good. The bundle itself is not staged or changed."""
        files = tuple(paths)

        def check(manifest: Manifest) -> None:
            if manifest.parts is not None:
                assign_parts(find_first_part(list(files)), list(files), manifest.parts)
            raise _Peeked(manifest)

        item = ReadyItem(files[0].name, files, 0, "split", 0.0)
        try:
            verify(item, check)
        except PartsError as exc:
            return str(exc) if exc.damaged else None
        except (_Peeked, BundleError, OSError):
            return None
        return None

    # -- holding ----------------------------------------------------------------------------

    def hold(self, item: ReadyItem, reason: str, sequence: int | None = None) -> str:
        """Record that *item* waits (logged once per reason); returns the reason."""
        self._held[item.name] = HeldItem(item.name, reason, sequence)
        if self._logged.get(item.name) != reason:
            self._logged[item.name] = reason
            log.warning("inbox: holding %s: %s", printable(item.name), reason)
        return reason

    def hold_for_space(self, item: ReadyItem, exc: InsufficientSpaceError, left: str) -> str:
        """A good bundle that does not fit in staging now waits in the inbox (§9.3 rule 8);
        ``left`` says so (or where a file given to 'agent apply' is left)."""
        return self.hold(item, f"waiting for staging space: {exc}; {left}")


def held_rows(held: Iterable[HeldItem]) -> list[dict[str, Any]]:
    """``agent status`` rows."""
    return [{"name": h.name, "reason": h.reason, "sequence": h.sequence} for h in held]
