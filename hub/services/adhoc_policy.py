"""An environment's ad-hoc policy (issue 16 §1): how many approvals a one-off run
(``tiangong run``, product ``adhoc``, one agent) needs there — ``0`` for "dev needs no
second person", ``1`` for prod, say.

The policy is one number per environment (``environments.adhoc_required_approvals``), set
by an admin (``environment.update``) with :func:`set_adhoc_policy`, audited
(``environment.adhoc_policy``, before and after) and shown on the environment's page. None
(the default) means ad-hoc runs follow the environment's own approval rule.

What it deliberately cannot do:

* weaken the normal release path: only :func:`hub.services.adhoc.ship_adhoc` asks
  :func:`adhoc_rule`, for a release of product ``adhoc`` queued for one agent; every other
  queue (``deployments queue``, rollouts, promotions) keeps the environment's rule, so a
  release that went out under a 0-approval policy is still refused there;
* override the root: where the current root delegates the environment's approvals to the
  site (design13 §1, mode ``signed`` or ``hub``) the agent counts approvals itself, so a
  policy below the delegation's threshold is refused when it is set, and the export still
  checks the delegation as for any release (:mod:`hub.services.approval_export`).
"""

from __future__ import annotations

from hub.db import Deployment, Environment
from hub.errors import ValidationError
from hub.services import audit
from hub.services.approval_rules import MAX_REQUIRED, Rule, rule_for
from hub.services.context import ServiceContext
from hub.services.environments import get_environment
from hub.services.users import require

__all__ = ["ADHOC_PRODUCT", "adhoc_rule", "describe_policy", "is_adhoc", "set_adhoc_policy"]

ADHOC_PRODUCT = "adhoc"  # the product of every one-off run (hub.services.adhoc)


def adhoc_rule(env: Environment) -> Rule:
    """The rule an ad-hoc run needs in ``env``: the policy's number of approvals from the
    environment's groups (its min groups capped by that number), or the environment's own
    rule when it has no ad-hoc policy."""
    own = rule_for(env)
    required = env.adhoc_required_approvals
    if required is None:
        return own
    return Rule(env.name, required, own.groups, max(1, min(own.min_groups, required)))


def is_adhoc(dep: Deployment) -> bool:
    """Whether ``dep`` is an ad-hoc run's deployment: product ``adhoc``, for one agent."""
    return dep.release.product.name == ADHOC_PRODUCT and dep.agent is not None


def describe_policy(env: Environment) -> str:
    """``ad-hoc runs need no approval`` / ``… need 1 approval`` / ``… follow the
    environment's rule (2 approvals)``."""
    required = env.adhoc_required_approvals
    if required is None:
        return f"ad-hoc runs follow the environment's rule ({rule_for(env).describe()})"
    if required == 0:
        return "ad-hoc runs need no approval"
    return f"ad-hoc runs need {adhoc_rule(env).describe()}"


def _root_floor(ctx: ServiceContext, env: Environment) -> tuple[int, str] | None:
    """(threshold, text) of the current root's approval delegation for ``env``."""
    if ctx.keys is None:
        return None
    root = ctx.keys.root
    delegation = root.delegation(env.name)
    if delegation is None:
        return None
    return delegation.threshold, (f"root version {root.version} delegates its approvals to "
                                  f"the site (mode {delegation.mode}, {delegation.threshold} "
                                  f"approval{'s' if delegation.threshold != 1 else ''})")


def set_adhoc_policy(ctx: ServiceContext, environment: str, required: int | None) -> Environment:
    """Set (``required`` 0..MAX) or clear (None) ``environment``'s ad-hoc policy; audited.

    Raises:
        PermissionDeniedError (not an admin of the environment), NotFoundError,
        ValidationError (out of range; below the root delegation's threshold — the agent
        would refuse every such run).
    """
    env = get_environment(ctx.session, environment)
    require(ctx.actor, "environment.update", env)
    if required is not None:
        if not 0 <= required <= MAX_REQUIRED:
            raise ValidationError(f"environment {env.name}: an ad-hoc policy needs "
                                  f"0..{MAX_REQUIRED} approvals, not {required}")
        floor = _root_floor(ctx, env)
        if floor is not None and required < floor[0]:
            raise ValidationError(
                f"environment {env.name}: {floor[1]}; its agents refuse a bundle with fewer, "
                f"so an ad-hoc policy of {required} approval{'s' if required != 1 else ''} "
                f"is refused — set at least {floor[0]} or leave the environment's rule")
    before = env.adhoc_required_approvals
    env.adhoc_required_approvals = required
    ctx.session.flush()
    audit.record(ctx, "environment.adhoc_policy", "environment", env.name,
                 {"from": before, "to": required, "rule": describe_policy(env)})
    return env
