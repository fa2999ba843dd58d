"""The ``releases`` pages: products and releases, upload of a release archive, a release's
steps and files (syntax-highlighted), the diff against the previous release, submit,
approve and reject.

Views translate, services decide (STYLE.md): who may read, create, submit, approve or
reject — and the four-eyes rule — are decided in :mod:`hub.services.releases` and
:mod:`hub.services.approvals`. This module hides the buttons a user cannot use
(:func:`hub.services.approvals.approval_scopes`), turns an upload into a file the service
can read, and turns a refused archive into a 400 page naming the file and the reason.

Uploads: the archive is written to a private directory under the hub's releases directory
(never into the release store itself), handed to
:func:`hub.services.releases.create_release`, which unpacks it with the bundle package's
safe unpacker, and removed afterwards whatever happened. A refused archive leaves no
product, release, audit event or stored file behind. Every cap is a ``[web]`` setting of
hub.toml (:class:`web.config.UploadLimits`): the request body is cut at
``max_upload_bytes`` before anything reads it; the unpacker refuses an archive whose
declared sizes pass ``max_unpacked_file_bytes``, ``max_unpacked_total_bytes`` or
``max_unpack_ratio`` times the upload, or with more than ``max_unpacked_files`` members,
before writing the member that passes, and counts the bytes it writes. A refusal names the
hub.toml setting; no message shows the hub's own paths.

Highlighting uses Pygments with CSS classes only (``web/static/highlight.css``): the CSP
allows no inline styles.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import (
    BashLexer,
    DiffLexer,
    JsonLexer,
    MySqlLexer,
    PostgresLexer,
    PythonLexer,
    SqlLexer,
    TextLexer,
    TOMLLexer,
    YamlLexer,
)
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import secure_filename

from bundle.release_archive import ArchiveLimits
from bundle.steps import referenced_files, undo_support
from hub.app import hub_config
from hub.db import Release, db
from hub.errors import ConflictError, NotFoundError, ValidationError
from hub.services.approvals import (
    MAX_COMMENT_CHARS,
    approval_scopes,
    approve_release,
    reject_release,
    visible_approvals,
)
from hub.services.context import ServiceContext
from hub.services.deployments import queue_deployment
from hub.services.environments import visible_environments
from hub.services.plans import outcomes_json
from hub.services.releases import (
    RELEASE_TOML,
    StoredFileText,
    can_read,
    create_release,
    diff_releases,
    get_product,
    get_release,
    list_products,
    list_releases,
    previous_release,
    read_release_file,
    require_read,
    submit_release,
)
from hub.services.users import can
from web.config import UploadLimits
from web.stepgraph import graph_rows
from web.views import ctx, in_scope, login_required, signed_in_user, visible_environment

__all__ = [
    "UploadRefusedError",
    "archive_limits",
    "bp",
    "create_from_upload",
    "highlight_file",
    "upload_limit",
]

bp = Blueprint("releases", __name__, url_prefix="/releases")

#: Largest file compared line by line on the diff page (difflib's time grows faster than
#: the size); larger changed files are only named.
MAX_DIFF_FILE_BYTES = 128 * 1024  # bytes
#: Longest uploaded file name shown back to the user.
MAX_SHOWN_NAME_CHARS = 200  # characters
MAX_PLANS_SHOWN = 20  # newest preflight plans on a release page

_FORMATTER = HtmlFormatter(cssclass="highlight", linenos="table", wrapcode=True)
_BY_SUFFIX: dict[str, type[Lexer]] = {
    ".sql": SqlLexer,
    ".yaml": YamlLexer,
    ".yml": YamlLexer,
    ".sh": BashLexer,
    ".bash": BashLexer,
    ".py": PythonLexer,
    ".json": JsonLexer,
    ".toml": TOMLLexer,
}


# --- highlighting ---------------------------------------------------------------------


def _lexer_for(name: str, steps: list[Mapping[str, Any]]) -> Lexer:
    """The lexer for a release file: what the step using it says (SQL dialect, shell
    interpreter, Kubernetes YAML) wins over the file name's suffix."""
    for step in steps:
        if name not in referenced_files(step):
            continue
        kind = step.get("kind")
        if kind == "sql":
            return PostgresLexer() if step.get("engine") == "postgres" else MySqlLexer()
        if kind == "k8s":
            return YamlLexer()
        if kind == "shell":
            return PythonLexer() if step.get("interpreter") == "python" else BashLexer()
    lexer = _BY_SUFFIX.get(Path(name).suffix.lower(), TextLexer)
    return lexer()


def highlight_file(name: str, text: str, steps: list[Mapping[str, Any]]) -> Markup:
    """``text`` as highlighted HTML (classes only, no inline style)."""
    return Markup(highlight(text, _lexer_for(name, steps), _FORMATTER))  # noqa: S704 - Pygments escapes


def _highlight_diff(text: str) -> Markup:
    return Markup(highlight(text, DiffLexer(), _FORMATTER))  # noqa: S704 - Pygments escapes


# --- list -----------------------------------------------------------------------------


@bp.get("/")
@login_required
def index() -> Any:
    user = signed_in_user()
    require_read(user)
    session = ctx().session
    product = request.args.get("product") or None
    if product is not None:
        get_product(session, product)  # 404 for an unknown product
    releases = sorted(list_releases(session, product), key=lambda r: (r.product.name, -r.id))
    return render_template(
        "releases/index.html",
        products=list_products(session),
        releases=releases,
        product=product,
        can_upload=can(user, "release.create"),
        max_upload=size_text(upload_limit()),
    )


# --- upload ---------------------------------------------------------------------------


def _uploads() -> UploadLimits:
    limits: UploadLimits = current_app.extensions["tiangong_web"].config.uploads
    return limits


def upload_limit() -> int:
    """The request body cap for an upload, in bytes (``[web] max_upload_bytes``)."""
    return _uploads().max_upload_bytes


def archive_limits() -> ArchiveLimits:
    """The unpacker's caps from the ``[web]`` settings."""
    u = _uploads()
    return ArchiveLimits(
        max_archive_bytes=u.max_upload_bytes, max_members=u.max_unpacked_files,
        max_file_bytes=u.max_unpacked_file_bytes, max_total_bytes=u.max_unpacked_total_bytes,
        max_ratio=u.max_unpack_ratio,
    )  # fmt: skip


#: The unpacker's limit names (in its messages) -> the hub.toml settings behind them.
_SETTING_OF = {
    "max_archive_bytes": "max_upload_bytes",
    "max_members": "max_unpacked_files",
    "max_file_bytes": "max_unpacked_file_bytes",
    "max_total_bytes": "max_unpacked_total_bytes",
    "max_ratio": "max_unpack_ratio",
}


def size_text(n: int) -> str:
    """``1073741824`` → ``1 GiB (1073741824 bytes)``: readable, and exact."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.3g} {unit} ({n} bytes)"
    return f"{n} bytes"


def _upload_refused(filename: str, reason: str, status: int) -> Any:
    return render_template(
        "releases/upload_error.html",
        filename=filename,
        reason=reason,
        status=status,
        can_upload=True,
        max_upload=size_text(upload_limit()),
    ), status


def _reason(message: str, saved: Path, shown: str, base: Path) -> str:
    """The service's message without the hub's private paths: the uploaded file is called
    by the name it was uploaded as, files inside it by their release names, the unpacked
    release itself "the archive"; a limit is named by its hub.toml setting."""
    text = message.replace(f"release archive {saved}: ", "", 1)
    unpacked = re.escape(str(base)) + r"/\.unpack-[^/\s]+/release"
    text = re.sub(unpacked + r"/", "", text)
    text = re.sub(unpacked + r"\b", f"the archive {shown}", text)
    text = text.replace(str(saved), shown)
    text = re.sub(r"\((?:limit )?(max_\w+)\)", lambda m: (
        f"(hub.toml [web] {_SETTING_OF[m.group(1)]})" if m.group(1) in _SETTING_OF
        else m.group(0)), text)
    # Anything else under the hub's data directory is nobody's business but the hub's.
    return text.replace(str(hub_config().data_dir), "<hub data directory>")


def _cap_upload_body() -> None:
    """Cap the upload's request body before anything reads it (the CSRF check reads the
    form first), so an oversized upload stops at the cap instead of filling the disk."""
    if request.endpoint == "releases.upload":
        request.max_content_length = upload_limit()


@bp.record_once
def _install_cap(state: BlueprintSetupState) -> None:
    # First of the app's before_request functions: ahead of the CSRF check's form read.
    state.app.before_request_funcs.setdefault(None, []).insert(0, _cap_upload_body)


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> Any:
    return _upload_refused(
        "(not read)", f"the upload is larger than the limit of {size_text(upload_limit())}", 413
    )


class UploadRefusedError(Exception):
    """An uploaded archive was refused: ``filename`` (as uploaded), ``reason`` (no hub
    paths), ``status`` (400, 409)."""

    def __init__(self, filename: str, reason: str, status: int) -> None:
        super().__init__(reason)
        self.filename, self.reason, self.status = filename, reason, status


def create_from_upload(sc: ServiceContext, archive: FileStorage | None) -> tuple[Release, str]:
    """Create a draft release from an uploaded archive acting as ``sc`` (the web page and
    the API share this); the caller commits. Returns the release and the file name it was
    uploaded as.

    Raises:
        UploadRefusedError: no file, or the service refused the archive (rolled back).
    """
    if archive is None or not archive.filename:
        raise UploadRefusedError("(none)", "choose a release archive file to upload", 400)
    shown = Path(archive.filename.replace("\\", "/")).name[:MAX_SHOWN_NAME_CHARS] or "upload"
    base = Path(hub_config().releases_dir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".upload-", dir=base))
    try:
        saved = work / (secure_filename(shown) or "upload")
        archive.save(saved)
        try:
            release = create_release(sc, saved, create_missing_product=True,
                                     archive_limits=archive_limits())
        except (ValidationError, ConflictError, NotFoundError) as exc:
            db.session.rollback()
            status = 409 if isinstance(exc, ConflictError) else 400
            raise UploadRefusedError(shown, _reason(str(exc), saved, shown, base),
                                     status) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return release, shown


@bp.post("/upload")
@login_required
def upload() -> Any:
    signed_in_user()
    try:
        release, shown = create_from_upload(ctx(), request.files.get("archive"))
    except UploadRefusedError as refused:
        return _upload_refused(refused.filename, refused.reason, refused.status)
    label, steps, files = release.label, len(release.steps), len(release.files)
    url = _release_url(release)
    db.session.commit()
    flash(f"Created draft release {label} from {shown}: {steps} step(s), {files} file(s).")
    return redirect(url)


# --- one release ----------------------------------------------------------------------


def _release_url(release: Release, endpoint: str = "releases.release") -> str:
    return url_for(endpoint, product=release.product.name, version=release.version)


def _load(product: str, version: str) -> Release:
    """The release, if the user may read releases (else a 404 like a missing release)."""
    user = signed_in_user()
    return in_scope(f"release {product[:64]} {version[:64]} does not exist",
                    lambda: get_release(ctx().session, product, version),
                    lambda _r: can_read(user))


@bp.get("/<product>/<version>")
@login_required
def release(product: str, version: str) -> Any:
    rel = _load(product, version)
    user = signed_in_user()
    session = ctx().session
    steps = [
        {"n": i, "step": step, "files": referenced_files(step), "undo": undo_support(step),
         "details": json.dumps(step, indent=2, sort_keys=True)}
        for i, step in enumerate(rel.steps, start=1)
    ]
    return render_template(
        "releases/release.html",
        release=rel,
        steps=steps,
        graph=graph_rows(rel.steps),
        plans=outcomes_json(session, rel)[:MAX_PLANS_SHOWN],
        previous=previous_release(session, rel),
        approvals=visible_approvals(user, rel),
        scopes=approval_scopes(user, rel, visible_environments(session, user)),
        is_author=rel.author_id == user.id,
        can_submit=rel.state == "draft" and can(user, "release.submit"),
        max_comment=MAX_COMMENT_CHARS,
        queue_targets=(
            [e for e in visible_environments(session, user) if can(user, "deployment.queue", e)]
            if rel.state == "approved" else []
        ),
    )


@bp.get("/<product>/<version>/files/<path:name>")
@login_required
def file(product: str, version: str, name: str) -> Any:
    rel = _load(product, version)
    shown = read_release_file(rel, name)
    body = highlight_file(name, shown.text, rel.steps) if shown.text is not None else None
    return render_template("releases/file.html", release=rel, file=shown, body=body,
                           release_toml=RELEASE_TOML)


def _text_of(rel: Release, name: str) -> str | None:
    try:
        shown: StoredFileText = read_release_file(rel, name, max_bytes=MAX_DIFF_FILE_BYTES)
    except NotFoundError:
        return None
    return shown.text


def _unified(a: str, b: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True),
                                        fromfile=old, tofile=new))


@bp.get("/<product>/<version>/diff")
@login_required
def diff(product: str, version: str) -> Any:
    rel = _load(product, version)
    against = request.args.get("against") or None
    other = (get_release(ctx().session, product, against) if against is not None
             else previous_release(ctx().session, rel))
    if other is None:
        return render_template("releases/diff.html", release=rel, other=None)
    changes = diff_releases(other, rel)
    old_steps = {str(s.get("name")): s for s in other.steps}
    new_steps = {str(s.get("name")): s for s in rel.steps}
    step_diffs = {
        name: _highlight_diff(_unified(
            json.dumps(old_steps[name], indent=2, sort_keys=True) + "\n",
            json.dumps(new_steps[name], indent=2, sort_keys=True) + "\n",
            f"{other.version}: {name}", f"{rel.version}: {name}"))
        for name in changes.steps_changed
    }
    file_diffs: dict[str, Markup | None] = {}
    for name in changes.files_changed:
        a, b = _text_of(other, name), _text_of(rel, name)
        file_diffs[name] = (
            _highlight_diff(_unified(a, b, f"{other.version}/{name}", f"{rel.version}/{name}"))
            if a is not None and b is not None else None
        )
    return render_template("releases/diff.html", release=rel, other=other, changes=changes,
                           step_diffs=step_diffs, file_diffs=file_diffs,
                           max_diff_bytes=MAX_DIFF_FILE_BYTES)


# --- decisions ------------------------------------------------------------------------


def _act(product: str, version: str, action: Callable[[Release], str]) -> Any:
    """Load the release, let ``action`` call its one service and say what happened, commit,
    flash, and go back to the release (POST/redirect/GET)."""
    rel = _load(product, version)
    message = action(rel)
    url = _release_url(rel)
    db.session.commit()
    flash(message)
    return redirect(url)


@bp.post("/<product>/<version>/submit")
@login_required
def submit(product: str, version: str) -> Any:
    def run(rel: Release) -> str:
        submit_release(ctx(), rel)
        return (f"Submitted release {rel.label} for approval; its content hash "
                f"{rel.content_hash} is now fixed.")

    return _act(product, version, run)


def _decision_form() -> tuple[str, str | None]:
    comment = request.form.get("comment", "")
    environment = request.form.get("environment") or None
    if environment is not None:
        visible_environment(environment)
    return comment, environment


@bp.post("/<product>/<version>/approve")
@login_required
def approve(product: str, version: str) -> Any:
    comment, environment = _decision_form()

    def run(rel: Release) -> str:
        approve_release(ctx(), rel, comment=comment, environment=environment)
        where = f"for {environment}" if environment else "for every environment"
        return f"You approved release {rel.label} {where}."

    return _act(product, version, run)


@bp.post("/<product>/<version>/queue")
@login_required
def queue(product: str, version: str) -> Any:
    """Queue an approved release for an environment: one deployment per enrolled agent
    (the services check the operator's grant there and the environment's approvals)."""
    environment = request.form.get("environment", "").strip()
    if not environment:
        raise ValidationError("choose the environment to deploy to")
    visible_environment(environment)

    def run(rel: Release) -> str:
        deps = queue_deployment(ctx(), rel, environment)
        targets = ", ".join(d.agent.agent_id if d.agent else "the environment" for d in deps)
        return (f"Queued release {rel.label} for {environment} ({targets}): it is pushed to "
                "online agents, or exported to media from the Media page.")

    return _act(product, version, run)


@bp.post("/<product>/<version>/reject")
@login_required
def reject(product: str, version: str) -> Any:
    comment, environment = _decision_form()

    def run(rel: Release) -> str:
        reject_release(ctx(), rel, comment=comment, environment=environment)
        return f"You rejected release {rel.label}; a rejection is final."

    return _act(product, version, run)
