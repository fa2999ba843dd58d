"""Products and releases: create from a release directory, change while draft, submit, diff.

A release is created from a release directory (``bundle.release.load_release``); its files
are copied into ``<data_dir>/releases/<content_hash>/`` and its normalized steps and file
list are stored. Its content hash is fixed at submission — the stored copy is re-hashed and
must still match — and from then on the release is immutable: :func:`update_release`
refuses, and a ``before_flush`` guard refuses any change to a non-draft release's content
columns even if a caller bypasses the services.

Approvals live in :mod:`hub.services.approvals`. This module does not build bundles.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session

from hub.db import Product, Release, User
from hub.errors import (
    ConflictError,
    ImmutableReleaseError,
    InvalidStateError,
    NotFoundError,
    ValidationError,
)
from hub.services import audit
from hub.services.adhoc_policy import ADHOC_PRODUCT
from hub.services.context import ServiceContext
from hub.services.notifications import enqueue
from hub.services.users import can, require

if TYPE_CHECKING:
    from bundle.release_archive import ArchiveLimits

__all__ = [
    "IMMUTABLE_COLUMNS",
    "MAX_SHOWN_FILE_BYTES",
    "ReleaseDiff",
    "ReleaseSourceLike",
    "StoredFileText",
    "can_read",
    "create_product",
    "create_release",
    "create_release_from_source",
    "diff_releases",
    "get_product",
    "get_release",
    "list_products",
    "list_releases",
    "previous_release",
    "read_release_file",
    "require_read",
    "submit_release",
    "update_release",
]

#: Columns a release may change only while it is a draft.
IMMUTABLE_COLUMNS = (
    "product_id",
    "version",
    "description",
    "author_id",
    "content_hash",
    "steps",
    "files",
    "stored_path",
)
_PRODUCT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RELEASE_TOML = "release.toml"


class _FileLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


class ReleaseSourceLike(Protocol):
    """What ``bundle.release.load_release`` returns (``ReleaseSource``)."""

    @property
    def product(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def steps(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def files(self) -> Sequence[_FileLike]: ...
    @property
    def content_hash(self) -> str: ...
    @property
    def root(self) -> Path: ...


# --- products -------------------------------------------------------------------------


def get_product(session: Session, name: str) -> Product:
    """Raises NotFoundError."""
    product: Product | None = session.scalar(select(Product).where(Product.name == name))
    if product is None:
        raise NotFoundError(f"product {name!r} does not exist")
    return product


def list_products(session: Session) -> list[Product]:
    return list(session.scalars(select(Product).order_by(Product.name)))


def create_product(ctx: ServiceContext, name: str, *, description: str = "") -> Product:
    """Raises PermissionDeniedError, ValidationError, ConflictError."""
    require(ctx.actor, "product.create")
    if not _PRODUCT.match(name):
        raise ValidationError(
            f"product name {name!r} must be lower-case letters, digits and '-', at most 63"
        )
    if ctx.session.scalar(select(Product.id).where(Product.name == name)) is not None:
        raise ConflictError(f"product {name!r} already exists")
    from hub.services.channels import create_default_channels  # channels import this module

    product = Product(name=name, description=description, created_at=ctx.now())
    ctx.session.add(product)
    ctx.session.flush()
    channels = create_default_channels(ctx, product)
    audit.record(ctx, "product.create", "product", name,
                 {"description": description, "channels": [c.name for c in channels]})
    return product


# --- releases -------------------------------------------------------------------------


def get_release(session: Session, product: str, version: str) -> Release:
    """Raises NotFoundError."""
    release: Release | None = session.scalar(
        select(Release).join(Product).where(Product.name == product, Release.version == version)
    )
    if release is None:
        raise NotFoundError(f"release {product} {version} does not exist")
    return release


def list_releases(session: Session, product: str | None = None) -> list[Release]:
    query = select(Release).join(Product).order_by(Product.name, Release.id)
    if product is not None:
        query = query.where(Product.name == product)
    return list(session.scalars(query))


def _files_json(source: ReleaseSourceLike) -> list[dict[str, Any]]:
    return [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in source.files]


def _steps_json(source: ReleaseSourceLike) -> list[dict[str, Any]]:
    return [dict(step) for step in source.steps]


def _load(path: Path) -> ReleaseSourceLike:
    from bundle.errors import ReleaseFormatError
    from bundle.release import load_release

    try:
        return load_release(Path(path))
    except ReleaseFormatError as exc:
        raise ValidationError(str(exc)) from exc
    except OSError as exc:
        raise ValidationError(f"release directory {path}: {exc}") from exc


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


@contextlib.contextmanager
def _unpacked(ctx: ServiceContext, archive: Path,
              limits: ArchiveLimits | None = None) -> Iterator[ReleaseSourceLike]:
    """Unpack a release archive safely (``bundle.release.load_release_archive``, with
    ``limits`` or the bundle package's defaults) into a private directory that is removed
    afterwards."""
    from bundle.errors import LimitExceededError, ReleaseFormatError
    from bundle.release import load_release_archive
    from bundle.release_archive import DEFAULT_ARCHIVE_LIMITS

    base = Path(ctx.releases_dir) if ctx.releases_dir is not None else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=base))
    try:
        try:
            source = load_release_archive(archive, work / "release",
                                          limits=limits or DEFAULT_ARCHIVE_LIMITS)
        except (ReleaseFormatError, LimitExceededError, OSError) as exc:
            raise ValidationError(f"release archive {archive}: {exc}") from exc
        yield source
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _store(ctx: ServiceContext, source: ReleaseSourceLike) -> str:
    """Copy release.toml and the listed files into releases/<hash>/ atomically."""
    if ctx.releases_dir is None:
        return ""
    final = Path(ctx.releases_dir) / source.content_hash
    if final.is_dir():
        return str(final)
    Path(ctx.releases_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=ctx.releases_dir))
    try:
        shutil.copyfile(Path(source.root) / RELEASE_TOML, tmp / RELEASE_TOML)
        for f in source.files:
            if f.name == RELEASE_TOML:
                continue
            dest = tmp / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.path, dest)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValidationError(f"cannot store release files in {final}: {exc}") from exc
    return str(final)


def create_release(
    ctx: ServiceContext,
    release_path: Path,
    *,
    product: str | None = None,
    create_missing_product: bool = False,
    archive_limits: ArchiveLimits | None = None,
    generated: bool = False,
) -> Release:
    """Create a draft release from a release directory or a release archive (``.tar``,
    ``.tar.gz``/``.tgz``, ``.zip``, unpacked with the bundle package's safe unpacker under
    ``archive_limits``, default :data:`bundle.release.DEFAULT_ARCHIVE_LIMITS`); see
    :func:`create_release_from_source`.

    Raises:
        ValidationError (invalid release or archive, product mismatch), ConflictError,
        PermissionDeniedError, NotFoundError (unknown product).
    """
    require(ctx.actor, "release.create")
    path = Path(release_path)
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise ValidationError(
                f"{path} is a file but not a release archive ({', '.join(ARCHIVE_SUFFIXES)})"
            )
        with _unpacked(ctx, path, archive_limits) as source:
            return create_release_from_source(
                ctx, source, product=product, create_missing_product=create_missing_product,
                generated=generated,
            )
    return create_release_from_source(
        ctx, _load(path), product=product, create_missing_product=create_missing_product,
        generated=generated,
    )


def create_release_from_source(
    ctx: ServiceContext,
    source: ReleaseSourceLike,
    *,
    product: str | None = None,
    create_missing_product: bool = False,
    generated: bool = False,
) -> Release:
    """Create a draft release from an already loaded release. With
    ``create_missing_product`` an unknown product is created first (needs product.create).
    Product ``adhoc`` is the hub's own (one-off runs, whose environment's ad-hoc policy may
    ask fewer approvals): only a ``generated`` release (``hub.services.generated``) is of it.

    Raises:
        PermissionDeniedError, ValidationError (``product`` differs from release.toml),
        NotFoundError (unknown product), ConflictError (version exists).
    """
    require(ctx.actor, "release.create")
    assert ctx.actor is not None
    if product is not None and product != source.product:
        raise ValidationError(f"release.toml names product {source.product!r}, not {product!r}")
    if source.product == ADHOC_PRODUCT and not generated:
        raise ValidationError(
            f"release.toml names product {ADHOC_PRODUCT!r}, which is kept for one-off runs "
            "(`tiangong run`, `hub templates run`; their environment's ad-hoc policy may ask "
            "fewer approvals): give the release a product of its own")
    try:
        prod = get_product(ctx.session, source.product)
    except NotFoundError:
        if not create_missing_product:
            raise
        prod = create_product(ctx, source.product)
    exists = ctx.session.scalar(
        select(Release.id).where(Release.product_id == prod.id, Release.version == source.version)
    )
    if exists is not None:
        raise ConflictError(
            f"release {source.product} {source.version} already exists; a changed release "
            "needs a new version"
        )
    stored = _store(ctx, source)
    release = Release(
        product=prod,
        version=source.version,
        description=source.description,
        author=ctx.actor,
        state="draft",
        content_hash=source.content_hash,
        steps=_steps_json(source),
        files=_files_json(source),
        stored_path=stored,
        created_at=ctx.now(),
    )
    ctx.session.add(release)
    ctx.session.flush()
    audit.record(
        ctx,
        "release.create",
        "release",
        release.label,
        {
            "content_hash": source.content_hash,
            "files": len(source.files),
            "steps": len(source.steps),
        },
    )
    return release


def update_release(
    ctx: ServiceContext,
    release: Release,
    *,
    description: str | None = None,
    source: ReleaseSourceLike | None = None,
) -> Release:
    """Change a draft release (its description, or its content from a reloaded directory).

    Raises:
        ImmutableReleaseError: the release was submitted (make a new version instead).
        PermissionDeniedError, ValidationError.
    """
    require(ctx.actor, "release.create")
    if release.state != "draft":
        raise ImmutableReleaseError(
            f"release {release.label} is {release.state} with content hash "
            f"{release.content_hash}: it cannot change; create a new version"
        )
    if source is not None:
        if (source.product, source.version) != (release.product.name, release.version):
            raise ValidationError(
                f"the new content is {source.product} {source.version}, not {release.label}"
            )
        release.content_hash = source.content_hash
        release.steps = _steps_json(source)
        release.files = _files_json(source)
        release.stored_path = _store(ctx, source)
        release.description = source.description
    if description is not None:
        release.description = description
    ctx.session.flush()
    audit.record(
        ctx, "release.update", "release", release.label, {"content_hash": release.content_hash}
    )
    return release


def submit_release(ctx: ServiceContext, release: Release) -> Release:
    """Submit a draft for approval; its content hash is fixed from now on.

    The stored copy is re-hashed first (when stored) and must still give the content hash.

    Raises:
        PermissionDeniedError, InvalidStateError (not a draft), ValidationError (the stored
        copy changed).
    """
    require(ctx.actor, "release.submit")
    if release.state != "draft":
        raise InvalidStateError(f"release {release.label} is {release.state}, not draft")
    if release.stored_path:
        reloaded = _load(Path(release.stored_path))
        if reloaded.content_hash != release.content_hash:
            raise ValidationError(
                f"release {release.label}: stored files in {release.stored_path} hash to "
                f"{reloaded.content_hash}, recorded {release.content_hash}"
            )
    release.state = "submitted"
    release.submitted_at = ctx.now()
    ctx.session.flush()
    audit.record(
        ctx, "release.submit", "release", release.label, {"content_hash": release.content_hash}
    )
    enqueue(ctx, "approval.needed", None, {"release": release.label,
                                           "content_hash": release.content_hash,
                                           "submitted_by": ctx.actor_name})
    return release


# --- diff -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseDiff:
    """Steps (by name) and files (by name) added, removed or changed from ``a`` to ``b``."""

    steps_added: tuple[str, ...]
    steps_removed: tuple[str, ...]
    steps_changed: tuple[str, ...]
    steps_reordered: bool
    files_added: tuple[str, ...]
    files_removed: tuple[str, ...]
    files_changed: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (
            self.steps_added
            or self.steps_removed
            or self.steps_changed
            or self.steps_reordered
            or self.files_added
            or self.files_removed
            or self.files_changed
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": {
                "added": list(self.steps_added),
                "removed": list(self.steps_removed),
                "changed": list(self.steps_changed),
                "reordered": self.steps_reordered,
            },
            "files": {
                "added": list(self.files_added),
                "removed": list(self.files_removed),
                "changed": list(self.files_changed),
            },
        }


def _by_name(items: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(item.get("name")): item for item in items}


def diff_releases(a: Release, b: Release) -> ReleaseDiff:
    """What changed from release ``a`` to release ``b`` (pure; no permission needed)."""
    sa, sb = _by_name(a.steps), _by_name(b.steps)
    fa = {f["name"]: (f["size"], f["sha256"]) for f in a.files}
    fb = {f["name"]: (f["size"], f["sha256"]) for f in b.files}
    common = [n for n in sa if n in sb]
    order_b = [n for n in sb if n in sa]
    return ReleaseDiff(
        steps_added=tuple(n for n in sb if n not in sa),
        steps_removed=tuple(n for n in sa if n not in sb),
        steps_changed=tuple(n for n in common if dict(sa[n]) != dict(sb[n])),
        steps_reordered=common != order_b,
        files_added=tuple(sorted(n for n in fb if n not in fa)),
        files_removed=tuple(sorted(n for n in fa if n not in fb)),
        files_changed=tuple(sorted(n for n in fa if n in fb and fa[n] != fb[n])),
    )


# --- the guard ------------------------------------------------------------------------


def _guard_immutable(session: Session, _context: Any, _instances: Any) -> None:
    for obj in session.dirty:
        if not isinstance(obj, Release):
            continue
        state: Any = inspect(obj)
        state_hist = state.attrs.state.history
        committed_state = state_hist.deleted[0] if state_hist.deleted else obj.state
        if committed_state == "draft":
            continue
        changed = [c for c in IMMUTABLE_COLUMNS if state.attrs[c].history.has_changes()]
        if changed:
            raise ImmutableReleaseError(
                f"release {obj.version} is {committed_state}: {', '.join(changed)} cannot change"
            )


if not event.contains(Session, "before_flush", _guard_immutable):
    event.listen(Session, "before_flush", _guard_immutable)


# --- read-only queries for the web UI ---------------------------------------------------

#: Largest stored file :func:`read_release_file` returns the text of.
MAX_SHOWN_FILE_BYTES = 512 * 1024  # bytes


def can_read(user: User | None) -> bool:
    """Whether ``user`` may read products and releases: the ``view`` right somewhere.

    Products and releases belong to no environment, so a grant on any one environment (a
    viewer of ``test`` only, say) is enough; a user with no grant at all may not.
    """
    return user is not None and any(can(user, "view", g.environment) for g in user.grants)


def require_read(user: User | None) -> None:
    """Raise unless :func:`can_read`.

    Raises:
        PermissionDeniedError: the user has no grant (or is deactivated).
    """
    if not can_read(user):
        require(user, "view")  # raises with the usual message


def previous_release(session: Session, release: Release) -> Release | None:
    """The release of the same product created just before ``release`` (by creation order,
    since Tiangong does not compare version strings), or None for the first one."""
    prev: Release | None = session.scalar(
        select(Release)
        .where(Release.product_id == release.product_id, Release.id < release.id)
        .order_by(Release.id.desc())
        .limit(1)
    )
    return prev


@dataclass(frozen=True)
class StoredFileText:
    """One stored release file as the web UI shows it.

    ``text`` is None when the file is larger than the display cap (``too_large``) or not
    UTF-8 text (``binary``). ``digest_ok`` is False when the stored bytes no longer hash to
    the recorded SHA-256 (None when not checked: too large, or ``release.toml``).
    """

    name: str
    size: int  # bytes
    sha256: str
    text: str | None
    too_large: bool
    binary: bool
    digest_ok: bool | None


def read_release_file(
    release: Release, name: str, *, max_bytes: int = MAX_SHOWN_FILE_BYTES
) -> StoredFileText:
    """Read one of ``release``'s stored files (a name from ``release.files`` or
    ``release.toml``) for display, at most ``max_bytes`` of it.

    Only names the release records are opened, below its own stored directory and without
    following a symbolic link, so a crafted name can never reach another path.

    Raises:
        NotFoundError: the release has no such file, or no stored copy.
    """
    recorded = {f["name"]: f for f in release.files}
    if name != RELEASE_TOML and name not in recorded:
        raise NotFoundError(f"release {release.label} has no file {name!r}")
    if not release.stored_path:
        raise NotFoundError(f"release {release.label}: its files are not stored on this hub")
    path = Path(release.stored_path) / name
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise NotFoundError(f"release {release.label}: cannot read {name}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(max_bytes + 1)
    entry = recorded.get(name)
    sha = str(entry["sha256"]) if entry is not None else ""
    if len(data) > max_bytes:
        return StoredFileText(name, size, sha, None, True, False, None)
    digest_ok = hashlib.sha256(data).hexdigest() == sha if entry is not None else None
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return StoredFileText(name, size, sha, text, False, text is None, digest_ok)
