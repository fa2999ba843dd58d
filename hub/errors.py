"""Errors of the hub's services (the domain layer).

    HubError
    ├── PermissionDeniedError     the acting user lacks the role for this action (here)
    ├── NotFoundError             no such product, release, environment, agent, user …
    ├── ConflictError             it already exists / was already done (duplicate approval …)
    │   └── ImmutableReleaseError a submitted release cannot change; make a new release
    ├── SeparationOfDutiesError   four-eyes rule: an author never approves their own release
    ├── InvalidStateError         the object is not in a state that allows this transition
    │   ├── NotEnoughApprovalsError  too few distinct approvers for the environment
    │   ├── PromotionRefusedError    a channel's promotion rule is not met (says what is missing)
    │   ├── PreflightError           a target agent lacks a connection, step kind or disk
    │   └── PreflightRequiredError   the environment's policy wants a passed preflight plan
    ├── ValidationError           the input is malformed (bad name, bad key, bad release dir)
    ├── ConfigError               the hub's configuration or data directory is unusable
    └── AuditError                audit log problems the hub itself detects
        └── AuditVerificationError  a chain or checkpoint does not verify (names the event)

Views and CLI commands only translate these into HTTP responses, flash messages or exit
codes; they never re-implement a rule. An error that carries a :class:`RefusalEvent`
(``exc.audit``) is a refusal the audit log keeps: the entry point rolls the work back, then
records that one event in a transaction of its own (``hub.services.audit.record_refusal``).
Messages name the object and the rule, e.g.
``release billing 2.4.0: alice is its author and cannot approve it``.

This module deliberately has no dependency on Flask or SQLAlchemy (``hub.audit_cli`` uses
it offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "AuditError",
    "AuditVerificationError",
    "ConfigError",
    "ConflictError",
    "HubError",
    "ImmutableReleaseError",
    "InvalidStateError",
    "NotEnoughApprovalsError",
    "NotFoundError",
    "PermissionDeniedError",
    "PreflightError",
    "PreflightRequiredError",
    "PromotionRefusedError",
    "RefusalEvent",
    "SeparationOfDutiesError",
    "ValidationError",
]


@dataclass(frozen=True)
class RefusalEvent:
    """The audit event of a refusal: recorded after the refused work was rolled back."""

    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]


class HubError(Exception):
    """Base of every hub domain error."""

    #: set by refusals the audit log keeps (see the module doc)
    audit: RefusalEvent | None = None

    def __init__(self, *args: object, audit: RefusalEvent | None = None) -> None:
        super().__init__(*args)
        if audit is not None:
            self.audit = audit


class PermissionDeniedError(HubError):
    """The acting user may not perform this action (in this environment)."""


class NotFoundError(HubError):
    """The named object does not exist."""


class ConflictError(HubError):
    """The object already exists or the action was already done."""


class ImmutableReleaseError(ConflictError):
    """A release that left the draft state was asked to change."""


class SeparationOfDutiesError(HubError):
    """The four-eyes rule refuses this action."""


class InvalidStateError(HubError):
    """The object's state does not allow this transition."""


class NotEnoughApprovalsError(InvalidStateError):
    """The release lacks the distinct approvals an environment requires."""


class PromotionRefusedError(InvalidStateError):
    """Promoting a release into a channel does not meet the channel's rule."""


class PreflightError(InvalidStateError):
    """A target agent lacks what a release needs (hub.services.preflight)."""


class PreflightRequiredError(InvalidStateError):
    """The environment's preflight policy wants a plan of the release passed on every target
    agent within N hours, and one has not (hub.services.plans.require_passed_plan)."""


class ValidationError(HubError):
    """Malformed input."""


class DestinationError(ValidationError):
    """A directory the hub was asked to write into cannot be used (media that is read-only,
    full or not a directory; an export directory that cannot be made)."""


class ConfigError(HubError):
    """Configuration or data directory problem."""


class AuditError(HubError):
    """Audit log problem."""


class AuditVerificationError(AuditError):
    """An audit chain, export or checkpoint does not verify."""
