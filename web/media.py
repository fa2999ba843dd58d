"""The ``media`` pages: export an environment's queued deployments as bundle files, and
import result files (and enrollment requests) by upload — the browser's ``tiangong hub
export`` and ``tiangong hub import``.

**Export.** :func:`hub.services.exchange.export_environment` writes the signed bundles and
``INDEX-<environment>.txt`` into a fresh private directory
``<data_dir>/web-exports/<environment>-<time>-<random>/``; the operator is sent to that
export's page and downloads it as one *uncompressed* tar (the bundles are zstd-compressed
already), streamed from the files with its length announced, in bounded memory. The
directory is removed once the whole tar has been sent; an interrupted download leaves it, so
the same bundles can be downloaded again (the deployments are already marked exported). When
the hub config names ``export_dir`` (a mounted share), the operator may export there
instead, exactly as ``hub export --out`` would.

**Import.** Uploaded files are saved into a private directory
``<data_dir>/import-uploads/<time>-<random>/`` and handed to
:func:`~hub.services.exchange.import_directory`, which decides everything. The page shows the
CLI's table and totals. Files that were imported (or were duplicates) are removed from the
upload directory, since the hub stored them verbatim; a refused file stays there, as the
importer leaves a refused file where it found it, and the page says where. Enrollment
responses written for uploaded enrollment requests are kept for download on the agent's page.
A refresh that re-sends the upload is harmless: importing twice changes nothing.

This module decides nothing: permission checks are the services' (``export_environment``,
``import_directory``; who may see an export or name an environment: :func:`web.views.in_scope`).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import RequestEntityTooLarge

from hub.app import hub_config
from hub.errors import NotFoundError, PermissionDeniedError, ValidationError
from hub.services.deployments import pending_exports
from hub.services.environments import get_environment, viewable_environments
from hub.services.exchange import (
    DEFAULT_EXPIRY,
    ExportReport,
    export_environment,
    import_directory,
)
from hub.services.users import can
from signing.fileio import write_file_atomic
from web.agents import (
    cap_request_body,
    response_name,
    store_response,
    too_large_page,
    upload_name,
    web_now,
)
from web.views import ctx, in_scope, login_required, signed_in_user, visible_environment

__all__ = [
    "EXPORTS_DIR",
    "IMPORT_LIMIT_SETTING",
    "MAX_IMPORT_UPLOAD_BYTES",
    "UPLOADS_DIR",
    "bp",
    "export_for_download",
    "import_limit",
    "tar_length",
    "tar_stream",
]

EXPORTS_DIR = "web-exports"  # under data_dir: exports waiting to be downloaded
UPLOADS_DIR = "import-uploads"  # under data_dir: uploaded files (refused ones stay)
META = ".export.json"  # an export's summary, beside its files (not put in the tar)
COPY_CHUNK = 1024 * 1024  # bytes read per step while streaming a tar
#: Largest import upload (all files of one request), unless the app setting below says
#: otherwise.
MAX_IMPORT_UPLOAD_BYTES = 4 * 1024**3  # bytes
IMPORT_LIMIT_SETTING = "TIANGONG_MAX_IMPORT_UPLOAD_BYTES"  # app config key (bytes)
BLOCK = tarfile.BLOCKSIZE  # 512 bytes
RECORD = tarfile.RECORDSIZE  # 10240 bytes: a tar's length is a multiple of this
_EXPORT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}-\d{8}T\d{6}Z-[0-9a-f]{8}$")

bp = Blueprint("media", __name__, url_prefix="/media")


def import_limit() -> int:
    """The largest import upload, in bytes (app setting :data:`IMPORT_LIMIT_SETTING`)."""
    return int(current_app.config.get(IMPORT_LIMIT_SETTING, MAX_IMPORT_UPLOAD_BYTES))


cap_request_body("media.import_files", import_limit)


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> Any:
    return too_large_page(f"the upload is larger than the limit of {import_limit():,} bytes; "
                          "nothing was read — import the files in smaller groups")


# -- the tar stream ---------------------------------------------------------------------------


def _header(path: Path, size: int) -> bytes:
    info = tarfile.TarInfo(path.name)
    info.size = size
    info.mtime = int(path.stat().st_mtime)
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int, unit: int) -> int:
    return -size % unit


def tar_length(files: list[Path]) -> int:
    """The exact length of :func:`tar_stream` over ``files`` (for Content-Length)."""
    total = 0
    for path in files:
        size = path.stat().st_size
        total += len(_header(path, size)) + size + _padding(size, BLOCK)
    total += 2 * BLOCK
    return total + _padding(total, RECORD)


def tar_stream(files: list[Path]) -> Iterator[bytes]:
    """An uncompressed POSIX (pax) tar of ``files`` (flat, by file name), produced while
    reading them: no copy on disk, at most :data:`COPY_CHUNK` bytes in memory.

    Raises:
        OSError: a file shrank or vanished while being sent (the download is then cut
            short rather than silently wrong).
    """
    total = 0
    for path in files:
        size = path.stat().st_size
        header = _header(path, size)
        yield header
        total += len(header)
        left = size
        with path.open("rb") as fh:
            while left:
                chunk = fh.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise OSError(f"{path.name} shrank while it was being sent")
                left -= len(chunk)
                yield chunk
        pad = _padding(size, BLOCK)
        total += size + pad
        if pad:
            yield b"\0" * pad
    end = 2 * BLOCK + _padding(total + 2 * BLOCK, RECORD)
    yield b"\0" * end


# -- exports kept for download ----------------------------------------------------------------


@dataclass(frozen=True)
class PendingExport:
    """An export written for download and not yet (completely) downloaded."""

    name: str
    environment: str
    by: str
    at: str
    files: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    path: Path
    #: queued deployments another process (CLI export, live server) claimed first
    taken: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.files)


def _exports_root() -> Path:
    return hub_config().data_dir / EXPORTS_DIR


def _read_export(path: Path) -> PendingExport | None:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return PendingExport(path.name, meta["environment"], meta["by"], meta["at"],
                         meta["files"], meta["failed"], path, tuple(meta.get("taken", ())))


def _export_named(name: str) -> PendingExport:
    """The pending export ``name``, if the actor may export its environment (anyone else is
    answered as if it did not exist).

    Raises:
        NotFoundError.
    """

    def lookup() -> PendingExport:
        found = _read_export(_exports_root() / name) if _EXPORT_NAME.match(name) else None
        if found is None:
            raise NotFoundError(name)
        return found

    sc = ctx()
    return in_scope(
        f"export {name[:80]} is not waiting here: it was downloaded completely (and removed) "
        "or never existed",
        lookup,
        lambda f: can(sc.actor, "bundle.export", get_environment(sc.session, f.environment)),
    )


def _report_rows(report: ExportReport) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    files = [
        {"file": p.name, "deployment": b.deployment_id, "agent": b.agent_id,
         "release": f"{b.product} {b.version}", "sequence": b.sequence, "size": p.stat().st_size}
        for b in report.written for p in b.paths
    ]
    if report.index is not None:
        files.append({"file": report.index.name, "deployment": None, "agent": None,
                      "release": "index of the media", "sequence": None,
                      "size": report.index.stat().st_size})
    failed = [{"deployment": d, "reason": r} for d, r in report.failed]
    return files, failed


def _flash_outcome(env: str, report: ExportReport, failed: list[dict[str, Any]]) -> None:
    """What the export did not write, and why: deployments another process claimed first
    (as ``hub export`` says it), failures, or nothing queued at all."""
    for dep_id in report.taken:
        flash(f"Deployment {dep_id}: exported by another process (a CLI export or the live "
              "server claimed it first); this export did not write it.")
    for dep_id, why in report.held:
        flash(f"Deployment {dep_id} is held and was not exported: {why}.")
    for line in report.capped_lines(f"the {DEFAULT_EXPIRY.days} days an export from this "
                                    "page is valid"):
        flash(line[0].upper() + line[1:] + ".")
    if not report.written and not failed and not report.taken and not report.held:
        flash(f"Nothing queued for {env}: nothing written.")
    for f in failed:
        flash(f"Deployment {f['deployment']} was NOT exported: {f['reason']}", "error")
    if report.index_error:  # what is written stands (as hub export says it)
        flash(f"{report.index_error[0].upper()}{report.index_error[1:]}"
              + ("; the bundles listed are written and recorded." if report.written else "."),
              "error")


def export_for_download(environment: str, by: str, export: Callable[[Path], ExportReport]
                        ) -> tuple[ExportReport, Path | None]:
    """Run ``export`` into a fresh private directory of :data:`EXPORTS_DIR` and keep it for
    download (its summary beside it, shown on the Media page until downloaded); the
    directory, or None when nothing was written (then it is removed). Shared by the Media
    page's export and the API's runs on media."""
    stamp = web_now().strftime("%Y%m%dT%H%M%SZ")
    out = _exports_root() / f"{environment}-{stamp}-{secrets.token_hex(4)}"
    try:
        report = export(out)
        files, failed = _report_rows(report)
        if not files:
            shutil.rmtree(out, ignore_errors=True)
            return report, None
        meta = {"environment": environment, "by": by,
                "at": web_now().strftime("%Y-%m-%d %H:%M UTC"), "files": files,
                "failed": failed, "taken": report.taken}
        write_file_atomic(out / META, json.dumps(meta, indent=1).encode(), mode=0o600)
    except BaseException:
        if out.exists() and not any(out.glob("*.tgb*")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    return report, out


# -- views ------------------------------------------------------------------------------------


@bp.get("/")
@login_required
def index() -> Any:
    sc = ctx()
    user = signed_in_user()
    envs = []
    for env in viewable_environments(sc):
        envs.append({"name": env.name, "queued": len(pending_exports(sc.session, env.name)),
                     "may_export": can(user, "bundle.export", env)})
    exportable = {e["name"] for e in envs if e["may_export"]}
    waiting = []
    root = _exports_root()
    if root.is_dir():
        for path in sorted(root.iterdir()):
            found = _read_export(path)
            if found is not None and found.environment in exportable:
                waiting.append(found)
    return render_template(
        "media/index.html",
        environments=envs,
        waiting=waiting,
        export_dir=hub_config().export_path,
        may_import=can(user, "result.import"),
    )


@bp.post("/export")
@login_required
def export() -> Any:
    """Export the queued deployments of one environment, to a download or to export_dir."""
    sc = ctx()
    env = visible_environment(request.form.get("environment", ""), "bundle.export")
    cfg = hub_config()
    if request.form.get("destination", "download") == "directory":
        if cfg.export_path is None:
            raise ValidationError("no export directory is configured (export_dir in the hub "
                                  "config): choose the download")
        report = export_environment(sc, env.name, cfg.export_path)
        files, failed = _report_rows(report)
        if files:
            flash(f"Wrote {len(report.written)} bundle(s) of {env.name} to {cfg.export_path} "
                  f"(index: {report.index.name if report.index else '-'}).")
        _flash_outcome(env.name, report, failed)
        return redirect(url_for("media.index"))

    report, out = export_for_download(env.name, signed_in_user().username,
                                      lambda out: export_environment(sc, env.name, out))
    if out is not None:
        flash(f"Exported {len(report.written)} bundle(s) of {env.name}: download them now.")
    _flash_outcome(env.name, report, _report_rows(report)[1])
    if out is None:
        return redirect(url_for("media.index"))
    return redirect(url_for("media.export_page", name=out.name))


@bp.get("/exports/<name>")
@login_required
def export_page(name: str) -> Any:
    return render_template("media/export.html", export=_export_named(name))


@bp.get("/exports/<name>/download")
@login_required
def download(name: str) -> Any:
    """The export as one tar; the export's directory is removed once all of it was sent."""
    found = _export_named(name)
    files = sorted((p for p in found.path.iterdir() if p.is_file()
                    and not p.name.startswith(".")), key=lambda p: p.name)
    length = tar_length(files)

    def body() -> Iterator[bytes]:
        yield from tar_stream(files)
        shutil.rmtree(found.path, ignore_errors=True)

    resp = Response(body(), mimetype="application/x-tar")
    resp.headers["Content-Length"] = str(length)
    resp.headers["Content-Disposition"] = f'attachment; filename="tiangong-{found.name}.tar"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


@dataclass(frozen=True)
class UploadRow:
    """One line of the import summary (the CLI's columns, plus where a kept file is)."""

    file: str
    status: str
    agent_id: str | None
    deployment_id: int | None
    reason: str
    flags: tuple[str, ...] = ()
    kept: str | None = None  # where a refused or ignored file stays, relative to data_dir
    response: str | None = None  # agent id whose enrollment response can be downloaded


def _save_uploads(directory: Path) -> list[str]:
    """Save the uploaded files into ``directory`` under safe, distinct names."""
    saved: list[str] = []
    for upload in request.files.getlist("files"):
        if not upload.filename:
            continue
        name = upload_name(upload.filename)
        stem, dot, ext = name.partition(".")
        n = 1
        while name in saved:
            n += 1
            name = f"{stem}-{n}{dot}{ext}"
        upload.save(directory / name)
        saved.append(name)
    return saved


@bp.post("/import")
@login_required
def import_files() -> Any:
    """Import uploaded result files and enrollment requests; render the summary."""
    cfg = hub_config()
    stamp = web_now().strftime("%Y%m%dT%H%M%SZ")
    upload_dir = cfg.data_dir / UPLOADS_DIR / f"{stamp}-{secrets.token_hex(4)}"
    upload_dir.mkdir(parents=True, mode=0o700)
    try:
        saved = _save_uploads(upload_dir)
        # Called even with nothing uploaded: the service's permission check comes first.
        report = import_directory(ctx(), upload_dir, results_dir=cfg.data_dir / "results")
    except PermissionDeniedError:
        # Refused before anything was read: keep nothing of it. (Any other failure leaves
        # the uploads in place, for the next attempt.)
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise
    if not saved:
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise ValidationError("choose one or more result files (*.tgr) or enrollment requests")
    rows = []
    seen = set()
    for r in report.rows:
        seen.add(r.file)
        kept = response = None
        if r.status in ("imported", "duplicate", "enrolled"):
            (upload_dir / r.file).unlink(missing_ok=True)
        else:
            kept = f"{UPLOADS_DIR}/{upload_dir.name}/{r.file}"
        if r.status == "enrolled" and r.agent_id is not None:
            made = upload_dir / response_name(r.agent_id)
            if made.is_file():
                store_response(cfg.data_dir, r.agent_id, made.read_bytes())
                made.unlink()
                response = r.agent_id
        rows.append(UploadRow(r.file, r.status, r.agent_id, r.deployment_id, r.reason,
                              tuple(r.flags), kept, response))
    for name in saved:
        if name not in seen:
            rows.append(UploadRow(
                name, "ignored", None, None,
                "not a result file (*.tgr) or an enrollment request (enrollment-*.json): "
                "not read", (), f"{UPLOADS_DIR}/{upload_dir.name}/{name}"))
    if not any(upload_dir.iterdir()):
        upload_dir.rmdir()
    counts = {s: sum(1 for r in rows if r.status == s)
              for s in ("imported", "duplicate", "rejected", "enrolled", "ignored")}
    return render_template("media/import.html", rows=rows, counts=counts,
                           data_dir=cfg.data_dir)
