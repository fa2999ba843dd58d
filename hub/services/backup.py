"""Backup and restore of a hub: a consistent copy of its database, release store, keys
(still encrypted as they are on disk) and configuration, and bringing it back into a new data
directory (docs/install.md, "Backup and restore").

A backup is a directory::

    BACKUP/manifest.json          format, hub id, database kind, tiangong version, SHA-256
                                  of every file
    BACKUP/database.sqlite        SQLite: the online backup API's copy, or
    BACKUP/database.pgdump        PostgreSQL: `pg_dump --format=custom`
    BACKUP/files/...              the data directory without the database and the root key

The database is copied first and the files after: the release store only grows, so every
release the copied database names has its files in the copy. The root key
(``root-key.OFFLINE.json``) is never copied: it belongs offline, and a backup that held it
would be a second copy to guard. MySQL/MariaDB hubs are refused (no dump tool is wired up).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hub.config import CONFIG_FILE, HubConfig
from hub.errors import ConfigError, ValidationError

FORMAT = "tiangong-hub-backup/1"
MANIFEST = "manifest.json"
FILES = "files"
SQLITE_COPY = "database.sqlite"
PG_DUMP = "database.pgdump"
ROOT_KEY_NAME = "root-key.OFFLINE.json"  # what `hub init` writes by default: kept offline
DUMP_TIMEOUT_S = 3600  # seconds pg_dump / pg_restore may take
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class BackupReport:
    directory: Path
    hub_id: str
    database: str  # "sqlite" or "postgresql"
    files: int
    left_out: tuple[str, ...]  # data-directory files deliberately not copied (the root key)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _version() -> str:
    try:
        return importlib.metadata.version("tiangong")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _database_kind(url: str) -> str:
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise ConfigError(f"database {scheme}://...: backup supports SQLite and PostgreSQL only "
                      "(dump a MySQL/MariaDB hub with its own tools)")


def _sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1])


def _libpq_url(url: str) -> str:
    """The SQLAlchemy URL in the form pg_dump/pg_restore take (no ``+driver``)."""
    scheme, rest = url.split("://", 1)
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdecimal()
                        else 0)
    if candidates:
        return str(candidates[-1])
    raise ConfigError(f"{name} is not installed: install the PostgreSQL client "
                      "(Debian: postgresql-client) to back up or restore a PostgreSQL hub")


def _run_pg(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=DUMP_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"{what}: no answer within {DUMP_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise ConfigError(f"{what} exited {proc.returncode}: {proc.stderr.strip()}")


def _fresh_dir(path: Path, what: str) -> Path:
    """``path`` must not exist or be an empty directory; returns its ``.partial`` sibling,
    created empty, which is renamed to ``path`` when everything is written."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValidationError(f"{what} {path} exists and is not empty: give a new directory")
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(mode=0o700, parents=True)
    return partial


def _finish(partial: Path, path: Path) -> None:
    if path.exists():
        path.rmdir()  # empty, checked by _fresh_dir
    os.replace(partial, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(what: str, exc: OSError) -> ConfigError:
    where = f" {exc.filename}" if exc.filename else ""
    return ConfigError(f"{what}:{where}: {exc.strerror or exc}")


def backup(cfg: HubConfig, out: Path) -> BackupReport:
    """Write a consistent backup of the hub configured by ``cfg`` into the new directory
    ``out`` (created mode 0700: it holds the hub's keys and TLS private keys).

    Raises:
        ValidationError: ``out`` exists and is not empty.
        ConfigError: the data directory is not a hub, the database kind is not supported,
            pg_dump failed, or a file could not be read or written (named in the message).
    """
    try:
        return _backup(cfg, out)
    except OSError as exc:
        raise _os_error(f"backup to {out}", exc) from exc
    except sqlite3.Error as exc:
        raise ConfigError(f"backup to {out}: SQLite database {cfg.database_url}: {exc}") from exc


def _backup(cfg: HubConfig, out: Path) -> BackupReport:
    data_dir = cfg.data_dir
    root = data_dir / "root.json"
    if not root.is_file():
        raise ConfigError(f"{data_dir} is not an initialised hub (no root.json)")
    kind = _database_kind(cfg.database_url)
    hub_id = cfg.hub_id
    partial = _fresh_dir(out, "backup directory")
    try:
        skip: set[Path] = set()
        if kind == "sqlite":
            db_path = _sqlite_path(cfg.database_url)
            if not db_path.is_file():
                raise ConfigError(f"database {db_path} does not exist")
            src = sqlite3.connect(db_path)  # only read: the backup API copies its pages
            dst = sqlite3.connect(partial / SQLITE_COPY)
            try:
                src.backup(dst)  # the online backup API: a consistent snapshot
            finally:
                dst.close()
                src.close()
            skip |= {db_path, *(db_path.with_name(db_path.name + s) for s in _SQLITE_SIDE_FILES)}
        else:
            _run_pg([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                     f"--file={partial / PG_DUMP}", f"--dbname={_libpq_url(cfg.database_url)}"],
                    "pg_dump")
        left_out: list[str] = []
        files_dir = partial / FILES
        for path in sorted(data_dir.rglob("*")):
            rel = path.relative_to(data_dir)
            # Regular files only: not the running hub's gunicorn control socket, not symlinks.
            if path in skip or path.is_symlink() or not path.is_file():
                continue
            if path.name == ROOT_KEY_NAME:
                left_out.append(str(rel))
                continue
            target = files_dir / rel
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.copy2(path, target)
        entries = {str(p.relative_to(partial)): _sha256(p)
                   for p in sorted(partial.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "hub_id": hub_id, "database": kind,
                    "tiangong_version": _version(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "left_out": left_out, "sha256": entries}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        _finish(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupReport(out, hub_id, kind, len(entries), tuple(left_out))


def read_manifest(backup_dir: Path) -> dict[str, object]:
    """The manifest of ``backup_dir``, after checking every file against its SHA-256.

    Raises:
        ValidationError: not a backup, an unknown format, a missing, extra or changed file.
    """
    path = backup_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{path}: not a hub backup ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValidationError(f"{path}: format is not {FORMAT}")
    listed: dict[str, str] = manifest["sha256"]
    present = {str(p.relative_to(backup_dir)) for p in backup_dir.rglob("*")
               if p.is_file() and p != path}
    for name in sorted(present - set(listed)):
        raise ValidationError(f"{backup_dir}: {name} is not in {MANIFEST}: refusing a backup "
                              "that was added to")
    for name, digest in sorted(listed.items()):
        file = backup_dir / name
        if not file.is_file():
            raise ValidationError(f"{backup_dir}: {name} is missing (listed in {MANIFEST})")
        if _sha256(file) != digest:
            raise ValidationError(f"{backup_dir}: {name} does not match its SHA-256 in "
                                  f"{MANIFEST}: the copy is damaged")
    return manifest


def _set_database_url(config_file: Path, url: str) -> None:
    """Point hub.toml's ``database_url`` (in its ``[hub]`` table) at ``url``."""
    lines = config_file.read_text().splitlines() if config_file.exists() else ["[hub]"]
    setting = f"database_url = {json.dumps(url)}"
    table = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            table = stripped
        elif table in ("[hub]", None) and stripped.split("=", 1)[0].strip() == "database_url":
            lines[i] = setting
            break
    else:
        at = lines.index("[hub]") + 1 if "[hub]" in lines else 0
        lines.insert(at, setting)
    config_file.write_text("\n".join(lines) + "\n")


def restore(backup_dir: Path, data_dir: Path, database_url: str | None = None) -> str:
    """Bring the backup in ``backup_dir`` up as a hub in the new directory ``data_dir``.

    SQLite: the database goes to ``data_dir/hub.db`` (``database_url`` may name another SQLite
    file). PostgreSQL: ``database_url`` must name an empty database; pg_restore loads it.
    hub.toml is rewritten to point at the restored database. Returns the hub id.

    Raises:
        ValidationError: the backup is damaged, ``data_dir`` is not new, or the database URL
            is missing or of the wrong kind.
        ConfigError: pg_restore failed, or a file could not be read or written (named in the
            message).
    """
    try:
        return _restore(backup_dir, data_dir, database_url)
    except OSError as exc:
        raise _os_error(f"restore into {data_dir}", exc) from exc


def _restore(backup_dir: Path, data_dir: Path, database_url: str | None) -> str:
    manifest = read_manifest(backup_dir)
    kind = str(manifest["database"])
    if kind == "postgresql" and not database_url:
        raise ValidationError(f"{backup_dir} holds a PostgreSQL dump: give --database-url of an "
                              "empty PostgreSQL database to restore it into")
    if database_url and _database_kind(database_url) != kind:
        raise ValidationError(f"{backup_dir} holds a {kind} database; --database-url names "
                              f"{_database_kind(database_url)}")
    partial = _fresh_dir(data_dir, "data directory")
    try:
        shutil.copytree(backup_dir / FILES, partial, dirs_exist_ok=True)
        if kind == "sqlite":
            target = _sqlite_path(database_url) if database_url else data_dir / "hub.db"
            staged = partial / "hub.db" if target == data_dir / "hub.db" else target
            shutil.copy2(backup_dir / SQLITE_COPY, staged)
            url = database_url or f"sqlite:///{target}"
        else:
            assert database_url is not None
            _run_pg([_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                     f"--dbname={_libpq_url(database_url)}", str(backup_dir / PG_DUMP)],
                    "pg_restore")
            url = database_url
        _set_database_url(partial / CONFIG_FILE, url)
        _finish(partial, data_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return str(manifest["hub_id"])
