"""Import an agent's offline enrollment request file (``enrollment-*.json``) found on the
media beside the results: verify its self-signature, enroll the agent
(:func:`hub.services.agents.enroll_agent`) and write the signed enrollment response next to
it. A refused request is audited (``result.rejected``, check ``enrollment``) and left where
it is.

This module does not import result files (:mod:`hub.services.result_import`).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bundle.printable import printable
from hub.db import Agent
from hub.errors import HubError, ValidationError
from hub.services import audit
from hub.services.agents import EnrollmentRequest, EnrollmentResponse, enroll_agent
from hub.services.context import ServiceContext
from hub.services.import_files import ImportRow, NotAFile, open_handed_in
from signing.envelope import TYPE_ENROLLMENT, parse_envelope, verify_envelope
from signing.errors import KeyFileError, SigningError
from signing.fileio import write_file_atomic
from signing.keys import PublicKey
from signing.strictjson import loads_strict

__all__ = ["MAX_ENROLLMENT_BYTES", "import_enrollment", "reject_file"]

MAX_ENROLLMENT_BYTES = 64 * 1024  # bytes


def reject_file(
    ctx: ServiceContext, path: Path, reason: str, agent: str | None = None, check: str = "import"
) -> ImportRow:
    ctx.session.rollback()
    audit.record(
        ctx,
        "result.rejected",
        "file",
        printable(path.name)[:200],  # the audit log holds UTF-8 text only
        {"reason": printable(reason)[:2000], "check": check, "claimed_agent": agent},
    )
    ctx.session.commit()
    return ImportRow(path.name, "rejected", reason, agent)



def _already_enrolled(ctx: ServiceContext, request: EnrollmentRequest) -> str | None:
    """The agent id when this very request was imported before (same keys, same
    environment, same agent id if it names one, not revoked): importing it again is a
    duplicate, as for results. A revoked key, or the key under another environment or id,
    is not: :func:`enroll_agent` refuses those with its reason."""
    agent = ctx.session.scalar(
        select(Agent).where(Agent.ed25519_public == request.ed25519_public)
    )
    if (
        agent is None
        or agent.status == "revoked"
        or agent.x25519_public != request.x25519_public
        or agent.environment.name != request.environment
        or (request.agent_id is not None and request.agent_id != agent.agent_id)
    ):
        return None
    return str(agent.agent_id)


def import_enrollment(ctx: ServiceContext, path: Path) -> ImportRow:
    """An agent's enrollment request: self-signed by the key it announces. A request
    imported before (the stick still holds it when the results come back) is a
    ``duplicate`` row that changes nothing."""
    try:
        data = _read_request(path)
        env = parse_envelope(data, MAX_ENROLLMENT_BYTES)
        doc = loads_strict(env.payload, MAX_ENROLLMENT_BYTES)
        key = PublicKey.from_hex(doc["ed25519_public"])
        verify_envelope(
            data,
            payload_type=TYPE_ENROLLMENT,
            trusted=[key],
            threshold=1,
            max_bytes=MAX_ENROLLMENT_BYTES,
        )
        if not doc.get("environment"):
            raise ValidationError("the request names no environment")
        request = EnrollmentRequest(
            hostname=doc["hostname"],
            ed25519_public=doc["ed25519_public"],
            x25519_public=doc["x25519_public"],
            agent_id=doc.get("agent_id"),
            labels=tuple(sorted((str(k), str(v)) for k, v in (doc.get("labels") or {}).items())),
            agent_version=str(doc.get("agent_version", "")),
            environment=doc["environment"],
            hub_id=doc.get("hub_id"),
        )
        same = _already_enrolled(ctx, request)
        if same is not None:
            return ImportRow(
                path.name,
                "duplicate",
                f"agent {same} is already enrolled from this request: nothing changed",
                same,
            )
        response = enroll_agent(ctx, doc["environment"], request)
        # Written before the commit: an agent is never enrolled without its response (read-
        # only media), which could not be had again (the request would be a duplicate).
        out = _write_response(ctx, path, response)
        try:
            ctx.session.commit()
        except BaseException:
            if out is not None:
                out.unlink(missing_ok=True)
            raise
    except (SigningError, HubError, KeyError, TypeError, ValueError, OSError) as exc:
        return reject_file(ctx, path, f"enrollment request refused: {exc}", None, "enrollment")
    return ImportRow(
        path.name,
        "enrolled",
        f"agent {response.agent_id} enrolled in {response.environment}",
        response.agent_id,
    )


def _read_request(path: Path) -> bytes:
    """The first :data:`MAX_ENROLLMENT_BYTES` + 1 bytes of the request ``path`` (more is
    refused by the envelope's parser), read only from a regular file: a symbolic link is
    not followed and a FIFO or device is refused at once, not waited on or read without
    end.

    Raises:
        ValidationError: ``path`` is a symbolic link or not a regular file.
        OSError: it cannot be read.
    """
    try:
        fd = open_handed_in(path)
    except NotAFile as exc:
        raise ValidationError(str(exc)) from None
    with open(fd, "rb") as source:  # buffered: read(n) reads on until n bytes or the end
        return source.read(MAX_ENROLLMENT_BYTES + 1)


def _write_response(ctx: ServiceContext, path: Path, response: EnrollmentResponse
                    ) -> Path | None:
    """Write the signed ``response`` next to the request ``path`` (nothing without the
    release key); the file written.

    Raises:
        ValidationError: it cannot be written there (read-only media, no space).
    """
    if ctx.keys is None or ctx.keys.release_key is None:
        return None
    out = path.with_name(f"enrollment-response-{response.agent_id}.json")
    try:
        write_file_atomic(out, response.to_envelope(ctx.keys.release_key), mode=0o644,
                          overwrite=True)
    except (KeyFileError, OSError) as exc:
        raise ValidationError(
            f"its response cannot be written ({printable(str(exc))}): nothing enrolled; "
            "import it from a directory the hub can write to") from exc
    return out
