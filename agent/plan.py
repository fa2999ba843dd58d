"""Plan (preflight) bundles at the agent: verify, check the site, report — change nothing.

A plan (docs/bundle-format.md §6.11) arrives like any bundle: copied into the inbox, or
received live. :meth:`PlanRunner.process` takes an inbox item whose envelope *claims* the plan
payload type (read unverified only to choose this path: the verifier then insists on that
type, so a file that lies is refused) and:

1. verifies it exactly like a release bundle — signature by the release role, target, root
   version, expiry, quotas, payload digests — with :class:`~bundle.reader.ExpectPlan`, against
   the agent's **plan state** (``<home>/plan-state.json``), never the journal's release state;
   a refusal is quarantined with a signed ``rejected`` result, as for any bundle;
2. writes the new plan state atomically (crash point ``plan-accepted``) and moves the files to
   ``archive/plans/``; root updates the plan carried are *not* kept;
3. runs the checks (:mod:`agent.plancheck`) in a scratch directory under ``runs/`` — the
   release's own ``check`` scripts only where its approvals are met, exactly as for a
   deployment (``agent.approvalcheck``; the plan may carry them, §6.10), else ``skipped``;
4. records a signed result — ``plan-passed`` or ``plan-failed``, ``body.plan`` listing every
   check — in the journal (crash point ``plan-recorded``) and writes it to the outbox.

So the journal's accepted sequence, its time floor, its trusted root and its bundle records
never change because of a plan: a plan is never a replay of a release bundle and never makes
one wait. An agent that stops between 2 and 4 reports nothing for that plan; a copy of it
copied again is refused as a replay of itself (its sequence is used): plan again.

Deliberately not here: the checks themselves (``agent.plancheck``), ordering against release
bundles (plans have their own sequence space and need none). A plan is never refused for its
approvals: without them it still checks everything but the release's own scripts.
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import TYPE_CHECKING, Any

from agent.approvalcheck import check_approvals
from agent.faults import crash_point, fault_point
from agent.inbox import ReadyItem
from agent.plancheck import FAILED, SKIPPED, CheckResult, run_checks
from agent.stepcheck import check_steps
from bundle.errors import BundleError, PartsError
from bundle.inspect import inspect
from bundle.manifest import KIND_PLAN, Manifest
from bundle.parts import find_first_part
from bundle.printable import printable
from bundle.reader import ExpectPlan, VerifiedBundle, VerifierState, verify_parts, verify_path
from signing.envelope import TYPE_PLAN
from signing.errors import KeyFileError
from signing.fileio import write_file_atomic

if TYPE_CHECKING:
    from agent.service import Agent, ProcessOutcome

__all__ = ["PLAN_STATE_FILE", "PlanRunner", "is_plan"]

log = logging.getLogger("tiangong.agent.plan")

PLAN_STATE_FILE = "plan-state.json"
PLAN_ARCHIVE = "plans"  # under archive/


def is_plan(item: ReadyItem) -> bool:
    """Whether ``item``'s envelope claims to be a plan. Unverified: it only chooses which
    verification runs, and that verification refuses any other payload type."""
    try:
        first = find_first_part(list(item.paths)) if item.kind == "split" else item.paths[0]
        return inspect(first).payload_type == TYPE_PLAN
    except (BundleError, OSError):
        return False


class PlanRunner:
    """Runs the plan bundles of one agent (``agent.service.Agent`` owns one)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.config = agent.config
        self.state_file = self.config.home / PLAN_STATE_FILE

    # -- the plan state ---------------------------------------------------------------------

    def state(self) -> VerifierState:
        """The newest plan run (zeros before the first)."""
        try:
            doc = json.loads(self.state_file.read_text(encoding="utf-8"))
            return VerifierState(int(doc["root_version"]), int(doc["sequence"]),
                                 int(doc["time_floor"]))
        except FileNotFoundError:
            return VerifierState()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unreadable state must not let old plans run again: refuse every plan until the
            # operator looks (a fresh plan from the hub has a higher sequence than any).
            raise RuntimeError(f"the plan state {self.state_file} cannot be read ({exc}); "
                               "remove it to accept plans again") from exc

    def _keep_state(self, state: VerifierState) -> None:
        data = json.dumps({"root_version": state.root_version, "sequence": state.sequence,
                           "time_floor": state.time_floor}, sort_keys=True).encode("ascii")
        write_file_atomic(self.state_file, data, overwrite=True)

    # -- one item ---------------------------------------------------------------------------

    def process(self, item: ReadyItem) -> ProcessOutcome:
        """Verify, check and report one plan inbox item. Never raises for bad data.

        Raises:
            JournalWriteError: the result cannot be recorded (the plan state is kept).
        """
        from agent.service import ProcessOutcome

        agent, name = self.agent, printable(item.name)
        try:
            vb = self._verify(item)
        except PartsError as exc:
            if exc.damaged or exc.missing:
                return ProcessOutcome(name, "held", f"waiting for parts of the plan: {exc}")
            return agent._reject(item, exc.check, str(exc))
        except BundleError as exc:
            # Refused by a rule checked after the signature (expired, a replay, another
            # target): the result names the plan, so the hub attaches the refusal to it.
            signed = exc.manifest
            named = signed if isinstance(signed, Manifest) and signed.kind == KIND_PLAN else None
            return agent._reject(item, exc.check, f"plan {name}: {exc}", named=named)
        except (OSError, RuntimeError) as exc:
            agent._problem(f"plan {name}", f"cannot verify the plan {name}: {exc}; it stays "
                           "in the inbox and is tried again")
            return ProcessOutcome(name, "deferred", f"cannot read: {exc}")
        agent._solved(f"plan {name}", f"the plan {name} verified")
        m = vb.manifest
        try:
            try:
                self._keep_state(vb.state)
            except (OSError, KeyFileError) as exc:
                agent._problem(f"plan {name}", f"cannot write {self.state_file}: {exc}; the "
                               "plan stays in the inbox and is tried again")
                return ProcessOutcome(name, "deferred", f"cannot write the plan state: {exc}")
            crash_point("plan-accepted")
            log.info("plan %s (%s, plan sequence %d): checking %s %s", m.bundle_id, name,
                     m.sequence, m.release.product if m.release else "?",
                     m.release.version if m.release else "?")
            agent.inbox.forget(item)
            # A file that cannot be moved (full disk) stays: the next pass refuses it as a
            # replay of its own sequence, with a signed result (the plan state is kept).
            agent._move_out(item, self.config.archive / PLAN_ARCHIVE, None,
                            f"{name} (plan {m.bundle_id})")
            checks = self._checks(vb)
        finally:
            shutil.rmtree(vb.staged_dir, ignore_errors=True)
        failed = [c for c in checks if c.status == FAILED]
        status = "plan-failed" if failed else "plan-passed"
        if failed:
            summary = (f"plan failed: {len(failed)} of {len(checks)} check(s) failed; first: "
                       f"{failed[0].summary}")
        else:
            skipped = sum(c.status == SKIPPED for c in checks)
            summary = (f"plan passed: {len(checks) - skipped} check(s) passed"
                       + (f", {skipped} skipped" if skipped else "") + "; nothing was changed")
        release = m.release.to_json() if m.release is not None else {}
        intent = agent._intent(status, summary, m.bundle_id, vb.envelope_sha256, release, [],
                               extra={"plan": {"sequence": m.sequence,
                                               "checks": [c.to_json() for c in checks]}})
        seq = agent.journal.add_result(intent)
        crash_point("plan-recorded")
        (log.warning if failed else log.info)("plan %s: %s", m.bundle_id, summary)
        agent.flush()
        return ProcessOutcome(name, status, summary, m.bundle_id, agent._result_path(seq))

    def _verify(self, item: ReadyItem) -> VerifiedBundle:
        agent = self.agent
        trusted, release_state = agent._trust()
        plan_state = self.state()
        state = VerifierState(plan_state.root_version, plan_state.sequence,
                              max(plan_state.time_floor, release_state.time_floor))
        fault_point("staging")
        self.config.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        kwargs: dict[str, Any] = dict(
            trusted_root=trusted, state=state, staging_dir=self.config.staging,
            expect=ExpectPlan(agent_id=self.config.agent_id,
                              environment=self.config.environment),
            label=printable(item.name), clock=lambda: int(agent.clock()))
        if item.kind == "split":
            return verify_parts(list(item.paths), **kwargs)
        return verify_path(item.paths[0], **kwargs)

    def _checks(self, vb: VerifiedBundle) -> list[CheckResult]:
        m = vb.manifest
        files = dict(vb.files)
        problem = check_steps(self.config, m.steps, {f.name for f in m.files})
        refusal = check_approvals(self.config.environment, vb)  # scripts are release code
        steps_check = CheckResult(
            "steps", FAILED if problem else "passed",
            f"a deployment of this release would be refused: {problem}" if problem else
            f"{len(m.steps)} step(s) valid; every file and connection they name is here",
        )
        workdir = self.config.runs / m.bundle_id
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, mode=0o700)
        try:
            return [steps_check, *run_checks(
                self.config, m.steps, files, {f.name: f.size for f in m.files},
                bundle_id=m.bundle_id, release=m.release.to_json() if m.release else {},
                workdir=workdir, cancel=self.agent.runner.cancel,
                timeout_s=float(self.config.bundle_timeout_s),
                scripts_refused=refusal[0] if refusal is not None else None)]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
