"""``tiangong bundle``: create, inspect and verify bundle files from the command line.

This is a thin layer over ``bundle.writer`` and ``bundle.reader``: it parses options, shows
progress and prints results; every rule lives in the library.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from bundle.approvals import manifest_verdict
from bundle.errors import ApprovalsError, BundleError
from bundle.manifest import Approval, Manifest, Target
from bundle.parts import DEFAULT_SPLIT_SIZE, strip_part_suffix
from bundle.printable import printable
from bundle.reader import (
    ExpectRelease,
    ExpectResult,
    VerifiedBundle,
    VerifierState,
    inspect,
    verify_parts,
    verify_path,
)
from bundle.release import ReleaseSource, content_hash_of_manifest, scan_release
from bundle.windows import Policy, PolicyError, parse_freeze_spec, parse_window_spec
from bundle.writer import release_manifest, write_bundle
from signing.approvals import ReleaseRef, evaluate_approvals
from signing.cli_approvals import read_approval_file
from signing.cli_common import Passphrases, passphrase_options
from signing.durations import format_utc, parse_duration
from signing.errors import SigningError
from signing.keyfile import load_public_key
from signing.roots import TrustedRoot

__all__ = ["EXIT_INVALID", "EXIT_IO", "EXIT_OK", "EXIT_USAGE", "bundle", "progress_bar"]

EXIT_OK = 0
EXIT_INVALID = 1  # the bundle was refused: bad data (the message names the check)
EXIT_USAGE = 2  # bad command line
EXIT_IO = 3  # the file, trust document or staging area could not be read/written

#: The verification order of docs/bundle-format.md §9, as reported by ``verify --verbose``.
CHECKS: tuple[tuple[str, str], ...] = (
    ("format", "container: marker, member names and order, regular files only"),
    ("trust", "root updates carried by the bundle"),
    ("signature", "envelope signature by trusted keys"),
    ("manifest", "manifest parsed strictly"),
    ("kind", "document kind"),
    ("target", "addressed to this agent / environment / hub"),
    ("sequence", "root version and sequence newer than accepted"),
    ("expiry", "not expired at the time floor"),
    ("limit", "sizes and counts within limits"),
    ("space", "free space for staging"),
    ("digest", "every payload's length and SHA-256 (compressed)"),
    ("zstd", "every payload decompressed within the window cap; content SHA-256"),
    ("approvals", "approvals the root requires for --environment (release bundles)"),
)
_ALIASES = {"truncated": "format", "parts": "format", "staging": "space"}

_EXIT_EPILOG = """\b
Exit codes:
  0  the bundle verified (or was written and re-verified)
  1  the bundle was refused: the message names the file, the check and the reason
  2  the command line is wrong
  3  a file could not be read or written (not a verdict on the bundle)
"""


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


PROGRESS_LINE_STEP = 10  # percent between two progress lines when stderr is not a terminal


@contextmanager
def progress_bar(enabled: bool = True, *, force: bool = False
                 ) -> Iterator[Callable[[str, int, int], None] | None]:
    """A ``progress(phase, done, total)`` callback for long commands (bundle create/verify,
    hub export/import, agent apply), drawing on stderr: a bar per phase when stderr is a
    terminal; with ``force`` (``--progress``) and no terminal, one line per
    :data:`PROGRESS_LINE_STEP` percent (for logs). None when disabled or nobody would see it,
    so callers skip the bookkeeping."""
    tty = sys.stderr.isatty()
    if not enabled or not (tty or force):
        yield None
        return
    state: dict[str, Any] = {"phase": None, "bar": None, "done": 0, "shown": -1}

    def report(phase: str, done: int, total: int) -> None:
        if phase != state["phase"]:
            if state["bar"] is not None:
                state["bar"].render_finish()
            state.update(phase=phase, done=0, shown=-1, bar=None)
            if tty:
                state["bar"] = click.progressbar(length=max(total, 1), label=f"{phase:<12}",
                                                 file=sys.stderr, show_pos=False,
                                                 show_percent=True)
                state["bar"].render_progress()
        if state["bar"] is not None:
            state["bar"].update(max(0, done - state["done"]))
        else:
            percent = 100 * done // max(total, 1)
            step = percent - percent % PROGRESS_LINE_STEP
            if step > state["shown"]:
                state["shown"] = step
                click.echo(f"{phase}: {percent}% ({done} of {total})", err=True)
        state["done"] = done

    try:
        yield report
    finally:
        if state["bar"] is not None:
            state["bar"].render_finish()


def _load_root(path: str) -> TrustedRoot:
    try:
        return TrustedRoot.pin(Path(path).read_bytes())
    except OSError as exc:
        raise click.ClickException(f"cannot read trust document {path}: {exc.strerror}") from exc
    except SigningError as exc:
        raise click.ClickException(f"{path} is not a valid root document: {exc}") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bundle() -> None:
    """Create, inspect and verify bundle files (.tgb releases, .tgr results).

    A bundle is one signed file (optionally split into parts that fit FAT32 media) that
    carries a release's steps and files to one site. Nothing in it is used until its
    signature and every digest have been verified.
    """


@bundle.command("create", epilog=_EXIT_EPILOG)
@click.argument("release_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False),
              help="The release signing key (private key file, role 'release').")
@click.option("--root", "root_file", required=True, type=click.Path(dir_okay=False),
              help="The hub's current root document (root.json): the bundle names its version.")
@click.option("--agent", "agents", multiple=True, metavar="ID",
              help="Address the bundle to this agent id (repeatable).")
@click.option("--environment", metavar="ENV", help="Address the bundle to this environment.")
@click.option("--sequence", type=click.IntRange(min=1), required=True,
              help="Sequence number: must be higher than any bundle the target has accepted.")
@click.option("--expires", "expires_in", default="14d", show_default=True, metavar="DURATION",
              help="How long the bundle stays valid (e.g. 12h, 14d, 8w).")
@click.option("--not-before", "not_before_in", metavar="DURATION",
              help="Do not run before this much time from now (the agent waits).")
@click.option("--author", default="cli", show_default=True, help="Who wrote the release.")
@click.option("--approved-by", "approvers", multiple=True, metavar="USER",
              help="Record an approval by USER (repeatable; the hub fills these in).")
@click.option("--approval", "approval_files", multiple=True, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="A signed approval or attestation to carry (repeatable; made by "
              "'tiangong keys approve' or the hub). Agents of environments whose root "
              "delegation requires approvals count them.")
@click.option("--counter", type=click.IntRange(min=0), default=1, show_default=True,
              help="The release counter of this product.")
@click.option("--window", "windows", multiple=True, metavar="SPEC",
              help="Run only inside this maintenance window (repeatable): 'sat,sun "
                   "01:00-05:00 Europe/Berlin', 'mon-fri 22:00-02:00 UTC', or 'START/END' "
                   "(ISO 8601 with offset, or Unix seconds). docs/bundle-format.md §6.9.")
@click.option("--freeze", "freezes", multiple=True, metavar="SPEC",
              help="Never start a step in this freeze (repeatable): a window spec or "
                   "'MM-DD..MM-DD ZONE' (every year), then ': REASON' — e.g. "
                   "'12-20..01-05 UTC: year end'.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A JSON file holding the policy object of §6.9 (windows, freezes, "
                   "override); --window and --freeze add to it.")
@click.option("--split", "split", is_flag=False, flag_value=str(DEFAULT_SPLIT_SIZE),
              default=None, metavar="BYTES",
              help="Split into parts of at most BYTES (default when given alone: 4 GiB - 1, "
                   "the FAT32 limit). Suffixes K, M, G accepted.")
@click.option("--level", type=click.IntRange(1, 19), default=3, show_default=True,
              help="zstd compression level.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (.tgb); parts are written as OUTPUT.part000, .part001, ...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--no-progress", is_flag=True, help="Do not draw progress bars.")
@passphrase_options
def create(release_dir: Path, key_file: str, root_file: str, agents: tuple[str, ...],
           environment: str | None, sequence: int, expires_in: str, not_before_in: str | None,
           author: str, approvers: tuple[str, ...], approval_files: tuple[str, ...],
           counter: int, windows: tuple[str, ...], freezes: tuple[str, ...],
           policy_file: Path | None, split: str | None,
           level: int, output: Path, as_json: bool, no_progress: bool,
           passphrase_file: str | None, passphrase_env: str) -> None:
    """Build a signed bundle from RELEASE_DIR (a release.toml and its files).

    The hub does this for approved releases (tiangong hub export); this command is for
    building and testing bundles by hand. The output is written atomically, then re-read
    from disk and checked against its own manifest.
    """
    if not agents and not environment:
        raise click.UsageError("address the bundle with --agent and/or --environment")
    try:
        expires = parse_duration(expires_in)
        not_before = parse_duration(not_before_in) if not_before_in else None
        split_size = _parse_size(split) if split else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    policy = _policy(policy_file, windows, freezes)
    trusted = _load_root(root_file)
    now = int(time.time())
    try:
        key = Passphrases(passphrase_file, passphrase_env).load(key_file).signing_key()
        if key.key_id not in trusted.document.role_keys("release", now).keys:
            raise click.ClickException(
                f"{key_file} is not a release key of root version {trusted.version} "
                "(or it has expired or been revoked)")
        # One pass over the files: the writer hashes each while compressing it, and the
        # content hash is computed from those digests before the manifest is signed.
        source = scan_release(release_dir)
        envelopes = [read_approval_file(f) for f in approval_files]
        manifest, files = release_manifest(
            dataclasses.replace(source, content_hash=_PENDING_HASH),
            bundle_id=str(uuid.uuid4()), issuer=key.key_id,
            target=Target(agents=tuple(agents), environment=environment),
            root_version=trusted.version, sequence=sequence, created=now,
            expires=now + expires, counter=counter, author=author,
            approvals=tuple(Approval(by=a, at=now) for a in approvers),
            not_before=now + not_before if not_before is not None else None,
            approval_envelopes=envelopes,
            policy=policy,
        )
        with progress_bar(not no_progress and not as_json) as report:
            written = write_bundle(output, manifest, files, [key], split_size=split_size,
                                   level=level, progress=report, finish=_with_content_hash)
        release = written.manifest.release
        assert release is not None
        source = dataclasses.replace(source, content_hash=release.content_hash)
        _warn_unapproved(trusted, environment, source, author, envelopes, now)
    except (BundleError, SigningError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        # One line: a name holding a new line (in -o or in the message) cannot add its own.
        click.echo(f"Error: cannot write {printable(str(output))}: "
                   f"{printable(str(exc), double_backslash=False)}", err=True)
        sys.exit(EXIT_IO)
    content = sum(f.size for f in written.manifest.files)
    summary = {
        "bundle_id": written.manifest.bundle_id,
        "files": [str(p) for p in written.paths],
        "size": written.size,
        "content_size": content,
        "envelope_sha256": written.envelope_sha256,
        "product": source.product,
        "version": source.version,
        "sequence": sequence,
        "expires": written.manifest.expires,
        "approvals": len(written.manifest.approvals),
        "policy": None if policy is None else policy.to_json(),
    }
    if as_json:
        _emit_json(summary)
        return
    click.echo(f"wrote {', '.join(str(p) for p in written.paths)}")
    ratio = f" for {_human(content)} of content" if content else ""
    click.echo(f"  {source.product} {source.version}: {len(source.steps)} steps, "
               f"{len(written.manifest.files)} files, {_human(written.size)}{ratio}")
    click.echo(f"  bundle id {written.manifest.bundle_id}, sequence {sequence}, "
               f"expires {format_utc(written.manifest.expires)}")
    click.echo("  re-read from disk and verified against its manifest")


#: the content hash a manifest carries until the writer's digests give the real one
_PENDING_HASH = "0" * 64


def _with_content_hash(manifest: Manifest) -> Manifest:
    """``manifest`` with its release's content hash computed from its signed file digests
    (docs/release-format.md §5): what the release loader would have computed."""
    assert manifest.release is not None
    return dataclasses.replace(manifest, release=dataclasses.replace(
        manifest.release, content_hash=content_hash_of_manifest(manifest)))


def _warn_unapproved(trusted: TrustedRoot, environment: str | None, source: ReleaseSource,
                     author: str, envelopes: Sequence[bytes], now: int) -> None:
    """Say on stderr when agents of ``environment`` will refuse the bundle for its approvals
    (the bundle is still written: it may be meant for a test)."""
    if environment is None:
        return
    verdict = evaluate_approvals(trusted.document, environment,
                                 ReleaseRef(source.product, source.version, author),
                                 source.content_hash, envelopes, now)
    if not verdict.ok:
        click.echo(f"warning: agents of environment {environment} will refuse this bundle: "
                   f"{verdict.message}", err=True)


def _policy(policy_file: Path | None, windows: tuple[str, ...],
            freezes: tuple[str, ...]) -> Policy | None:
    """The policy of ``--policy FILE`` plus ``--window``/``--freeze`` (None when none).

    Raises:
        click.UsageError: a spec or the file breaks a rule of §6.9 (the message says which).
    """
    try:
        base = Policy()
        if policy_file is not None:
            try:
                value = json.loads(policy_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise click.UsageError(f"--policy {policy_file}: cannot be read as JSON: "
                                       f"{exc}") from exc
            try:
                base = Policy.from_json(value)
            except PolicyError as exc:
                raise click.UsageError(f"--policy {policy_file}: {exc}") from exc
        policy = Policy(base.windows + tuple(parse_window_spec(w) for w in windows),
                        base.freezes + tuple(parse_freeze_spec(f) for f in freezes),
                        base.override)
    except PolicyError as exc:
        raise click.UsageError(str(exc)) from exc
    return None if policy.empty else policy


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = 1
    if t and t[-1] in units:
        mult, t = units[t[-1]], t[:-1]
    if not t.isdecimal():
        raise ValueError(f"--split: {text!r} is not a size (e.g. 700M, 4G, 1048576)")
    return int(t) * mult


def _manifest_summary(m: Manifest) -> dict[str, Any]:
    doc: dict[str, Any] = m.to_json()
    doc.pop("secrets", None)
    doc["secrets"] = [{"name": s.name, "agent_id": s.agent_id} for s in m.secrets]
    return doc


@bundle.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_cmd(file: Path, as_json: bool) -> None:
    """Show what FILE claims to be — WITHOUT verifying it.

    Everything shown is UNVERIFIED: use 'tiangong bundle verify' before trusting any of it.
    """
    try:
        info = inspect(file)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        click.echo(f"Error: cannot read {printable(str(file))}: {exc.strerror}", err=True)
        sys.exit(EXIT_IO)
    m = info.manifest
    if as_json:
        _emit_json({"verified": False, "label": info.label, "payload_type": info.payload_type,
                    "claimed_signer_key_ids": list(info.claimed_signer_key_ids),
                    "envelope_sha256": info.envelope_sha256, "roots_count": info.roots_count,
                    "problem": info.problem,
                    "manifest": _manifest_summary(m) if m is not None else None})
        return
    click.echo(f"UNVERIFIED — {info.label} has not been verified; nothing below is trusted.")
    click.echo(f"  payload type   {info.payload_type}")
    click.echo(f"  claimed signer {', '.join(k[:16] for k in info.claimed_signer_key_ids)}")
    if m is None:
        click.echo(f"  manifest       unreadable: {info.problem}")
        return
    click.echo(f"  bundle id      {m.bundle_id} ({m.kind})")
    t = m.target
    click.echo(f"  target         agents={','.join(t.agents) or '-'} "
               f"environment={t.environment or '-'} hub={t.hub or '-'}")
    click.echo(f"  root/sequence  {m.root_version}/{m.sequence}")
    click.echo(f"  created        {format_utc(m.created)}   expires {format_utc(m.expires)}")
    if m.release is not None:
        r = m.release
        click.echo(f"  release        {r.product} {r.version} (counter {r.counter}) "
                   f"by {r.author}; approvals: {', '.join(a.by for a in r.approvals) or 'none'}")
        click.echo(f"  signed         {len(m.approvals)} approval/attestation envelope(s) "
                   "(judged by the agent)")
    if m.result is not None:
        click.echo(f"  result         agent {m.result.agent_id} seq {m.result.result_seq}: "
                   f"{m.result.status}")
    for i, step in enumerate(m.steps, 1):
        click.echo(f"  step {i:<3}       {step.get('kind')}: {step.get('name')}")
    total = sum(f.size for f in m.files)
    packed = sum(f.compressed_size for f in m.files)
    click.echo(f"  files          {len(m.files)}, {_human(total)} ({_human(packed)} compressed)")
    for f in m.files[:50]:
        click.echo(f"    {f.name}  {_human(f.size)}")
    if len(m.files) > 50:
        click.echo(f"    ... {len(m.files) - 50} more")
    if m.parts is not None:
        click.echo(f"  parts          1 header + {m.parts.count} data parts of "
                   f"{_human(m.parts.size)}")
    if m.policy is not None:
        for line in m.policy.describe():
            click.echo(f"  policy         {line}")


@bundle.command("verify", epilog=_EXIT_EPILOG)
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--trust", "trust_file", required=True, type=click.Path(dir_okay=False),
              help="The hub root document to trust (root.json).")
@click.option("--agent-id", help="Verify as this agent (release bundles).")
@click.option("--environment", help="The verifying agent's environment: also checks the "
              "approvals the root requires there, as that agent would.")
@click.option("--result", "is_result", is_flag=True, help="FILE is a result bundle (.tgr).")
@click.option("--agent-key", type=click.Path(dir_okay=False),
              help="With --result: the agent's public key file.")
@click.option("--result-agent-id", help="With --result: the agent id the result must come from.")
@click.option("--sequence-floor", type=click.IntRange(min=0), default=0, show_default=True,
              help="Refuse sequences at or below this (as an agent that accepted it would).")
@click.option("--root-version-floor", type=click.IntRange(min=0), default=None,
              help="Root version of --sequence-floor (default: the trusted root's version "
                   "when --sequence-floor is given, else 0).")
@click.option("--time-floor", type=click.IntRange(min=0), default=0, show_default=True,
              help="Unix time the verifier's clock may not go below.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the verified, decompressed files in this directory.")
@click.option("-v", "--verbose", is_flag=True, help="One line per check.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--no-progress", is_flag=True, help="Do not draw progress bars.")
def verify_cmd(files: tuple[Path, ...], trust_file: str, agent_id: str | None,
               environment: str | None, is_result: bool, agent_key: str | None,
               result_agent_id: str | None, sequence_floor: int, root_version_floor: int | None,
               time_floor: int, keep: Path | None, verbose: bool, as_json: bool,
               no_progress: bool) -> None:
    """Fully verify a bundle: signature, target, sequence, expiry and every payload digest.

    FILES is one bundle file, or all the parts of a split bundle (any order, any names).
    The payloads are decompressed into a private temporary directory and checked, each
    removed as soon as it is checked (or all kept with --keep).
    """
    trusted = _load_root(trust_file)
    expect: ExpectRelease | ExpectResult
    if is_result:
        if not agent_key or not result_agent_id:
            raise click.UsageError("--result needs --agent-key and --result-agent-id")
        try:
            key = load_public_key(agent_key).ed25519_public()
        except (SigningError, OSError) as exc:
            raise click.ClickException(f"cannot use agent key {agent_key}: {exc}") from exc
        expect = ExpectResult(hub_id=trusted.document.hub_id, agent_id=result_agent_id,
                              agent_key=key)
    else:
        if not agent_id and not environment:
            raise click.UsageError("say who is verifying: --agent-id and/or --environment")
        expect = ExpectRelease(agent_id=agent_id or "", environment=environment)
    if root_version_floor is None:
        root_version_floor = trusted.version if sequence_floor else 0
    state = VerifierState(root_version_floor, sequence_floor, time_floor)
    staging = Path(tempfile.mkdtemp(prefix="tiangong-verify-"))
    label = _files_label(files)
    try:
        with progress_bar(not no_progress and not as_json) as report:
            if len(files) == 1 and not files[0].name.endswith(".part000"):
                vb = verify_path(files[0], trusted_root=trusted, state=state, expect=expect,
                                 staging_dir=staging, progress=report, durable=False,
                                 keep=keep is not None, label=label)
            else:
                vb = verify_parts(list(files), trusted_root=trusted, state=state,
                                  expect=expect, staging_dir=staging, progress=report,
                                  durable=False, keep=keep is not None)
        if not is_result and environment is not None:
            verdict = manifest_verdict(vb.trusted_root.document, environment, vb.manifest,
                                       vb.state.time_floor)
            if not verdict.ok:
                raise ApprovalsError(f"bundle {label}: {verdict.message}")
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for name, path in vb.files.items():
                dest = keep / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
    except BundleError as exc:
        _report_failure(label, exc, verbose, as_json)
        sys.exit(EXIT_INVALID)
    except OSError as exc:
        click.echo(f"Error: {label}: {printable(str(exc), double_backslash=False)}", err=True)
        sys.exit(EXIT_IO)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _report_success(label, vb, verbose, as_json)


def _files_label(files: Sequence[Path]) -> str:
    """What ``bundle verify`` calls FILES in its verdict, escaped: the file's name, or for
    the parts of a split bundle (given in any order) the bundle's name and the count,
    ``site.tgb (3 parts)``, and their sorted names when they do not share one."""
    if len(files) == 1:
        return printable(files[0].name)
    names = sorted(f.name for f in files)
    bases = {strip_part_suffix(n) for n in names}
    if len(bases) == 1:
        return printable(f"{bases.pop()} ({len(files)} parts)")
    return printable(", ".join(names))


def _report_failure(label: str, exc: BundleError, verbose: bool, as_json: bool) -> None:
    failed = _ALIASES.get(exc.check, exc.check)
    # One line each: a part's name in the message (parts are named by the reader as they
    # are, a bundle by its escaped label) cannot write a line of its own.
    why = printable(str(exc), double_backslash=False)
    if as_json:
        _emit_json({"verified": False, "file": label, "check": exc.check, "reason": why})
        return
    if verbose:
        for name, what in CHECKS:
            if name == failed:
                click.echo(f"  FAIL  {what}: {why}")
                break
            click.echo(f"  ok    {what}")
    click.echo(f"REFUSED {label}: {why} [check: {exc.check}]", err=True)


def _report_success(label: str, vb: VerifiedBundle, verbose: bool, as_json: bool) -> None:
    m = vb.manifest
    if as_json:
        _emit_json({"verified": True, "file": label, "bundle_id": m.bundle_id, "kind": m.kind,
                    "envelope_sha256": vb.envelope_sha256,
                    "signers": sorted(vb.signer_key_ids), "root_version": m.root_version,
                    "sequence": m.sequence, "not_before": vb.not_before,
                    "files": {f.name: {"size": f.size, "sha256": f.sha256} for f in m.files}})
        return
    if verbose:
        for _, what in CHECKS:
            click.echo(f"  ok    {what}")
    what = (f"{m.release.product} {m.release.version}" if m.release is not None
            else f"result {m.result.result_seq} of {m.result.agent_id}" if m.result is not None
            else m.kind)
    click.echo(f"VERIFIED {label}: {what}, sequence {m.sequence}, {len(m.files)} files, "
               f"signed by {', '.join(k[:16] for k in sorted(vb.signer_key_ids))}")


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - convenience
    bundle.main(args=list(argv) if argv is not None else None, prog_name="tiangong bundle")
