
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trust (
    issuer        TEXT PRIMARY KEY,
    root_envelope BLOB NOT NULL,
    root_version  INTEGER NOT NULL,
    sequence      INTEGER NOT NULL,
    time_floor    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bundles (
    bundle_id        TEXT PRIMARY KEY,
    envelope_sha256  TEXT NOT NULL UNIQUE,
    source           TEXT NOT NULL,
    issuer           TEXT NOT NULL,
    root_version     INTEGER NOT NULL,
    sequence         INTEGER NOT NULL,
    product          TEXT,
    version          TEXT,
    manifest         TEXT NOT NULL,
    staged_dir       TEXT,
    not_before       INTEGER,
    state            TEXT NOT NULL,
    received_at      INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    summary          TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    bundle_id   TEXT NOT NULL REFERENCES bundles(bundle_id),
    idx         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    exit_code   INTEGER,
    summary     TEXT,
    details     TEXT,
    log_path    TEXT,
    PRIMARY KEY (bundle_id, idx, attempt)
);
CREATE TABLE IF NOT EXISTS results (
    result_seq   INTEGER PRIMARY KEY,
    bundle_id    TEXT,
    status       TEXT NOT NULL,
    file_name    TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    file_name   TEXT NOT NULL,
    file_sha256 TEXT,
    check_name  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          INTEGER NOT NULL
);
