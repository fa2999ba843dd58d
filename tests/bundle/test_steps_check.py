"""The preflight fields of steps: ``check`` (sql and shell) and ``server_version`` (sql),
docs/release-format.md §3.9."""

from __future__ import annotations

from typing import Any

import pytest

from bundle.errors import ReleaseFormatError
from bundle.release import load_release
from bundle.steps import (
    normalize_step,
    parse_version_requirement,
    referenced_files,
    validate_step,
    version_satisfies,
)

FILES = {"sql/up.sql", "sql/down.sql", "sql/check.sql", "scripts/do.sh", "scripts/check.sh"}
SQL = {"name": "schema", "kind": "sql", "engine": "postgres", "connection": "billing-db",
       "script": "sql/up.sql"}
SHELL = {"name": "smoke", "kind": "shell", "script": "scripts/do.sh"}


def test_check_fields_normalize_and_are_referenced() -> None:
    sql = normalize_step({**SQL, "check": "sql/check.sql", "server_version": ">= 14"}, 0, FILES)
    assert sql["check"] == "sql/check.sql" and sql["server_version"] == ">= 14"
    validate_step(sql, 0)
    assert referenced_files(sql) == ["sql/up.sql", "sql/check.sql"]
    shell = normalize_step({**SHELL, "check": "scripts/check.sh"}, 0, FILES)
    validate_step(shell, 0)
    assert referenced_files(shell) == ["scripts/do.sh", "scripts/check.sh"]


def test_without_check_fields_the_normalized_step_is_unchanged() -> None:
    assert "check" not in normalize_step(SQL, 0, FILES)
    assert "server_version" not in normalize_step(SQL, 0, FILES)
    assert "check" not in normalize_step(SHELL, 0, FILES)


@pytest.mark.parametrize(("raw", "words"), [
    ({**SQL, "check": "sql/chek.sql"}, ["field check", "did you mean 'sql/check.sql'"]),
    ({**SQL, "check": "sql/up.sql"}, ["field check", "only looks"]),
    ({**SQL, "down": "sql/down.sql", "check": "sql/down.sql"}, ["field check", "only looks"]),
    ({**SHELL, "check": "scripts/do.sh"}, ["field check", "only looks"]),
    ({**SQL, "server_version": "14"}, ["field server_version", "version requirement"]),
    ({**SQL, "server_version": ">= 14,"}, ["field server_version", "version requirement"]),
    ({**SQL, "server_version": 14}, ["field server_version", "version requirement"]),
    ({**SHELL, "server_version": ">= 1"}, ["server_version", "is a field of sql steps"]),
    ({"name": "k", "kind": "k8s", "connection": "kube", "manifests": ["sql/up.sql"],
      "check": "sql/check.sql"}, ["check", "is a field of sql and shell steps"]),
])
def test_bad_check_fields_are_refused(raw: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ReleaseFormatError) as info:
        normalize_step(raw, 0, FILES)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("server", "requirement", "ok"), [
    ("16.4 (Debian 16.4-1.pgdg120+1)", ">= 14", True),
    ("13.9", ">= 14", False),
    ("10.11.6-MariaDB-0+deb12u1", ">= 10.6, < 12", True),
    ("10.5.2-MariaDB", ">= 10.6, < 12", False),
    ("14", "== 14.0", True),
    ("14.1", "!= 14.1.0", False),
    ("v1.30.2", "> 1.29", True),
    ("unknown", ">= 1", None),
])
def test_version_requirements(server: str, requirement: str, ok: bool | None) -> None:
    assert version_satisfies(server, requirement) is ok


def test_requirement_clauses() -> None:
    assert parse_version_requirement(">= 10.6, < 12") == [(">=", (10, 6)), ("<", (12,))]


def test_release_toml_with_checks_loads(tmp_path: Any) -> None:
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "up.sql").write_text("create table t (x int);\n")
    (tmp_path / "sql" / "check.sql").write_text("select true;\n")
    (tmp_path / "release.toml").write_text(
        'format = 1\n\n[release]\nproduct = "billing"\nversion = "1.0.0"\n\n'
        '[[steps]]\nname = "schema"\nkind = "sql"\n'
        'engine = "postgres"\nconnection = "db"\nscript = "sql/up.sql"\n'
        'check = "sql/check.sql"\nserver_version = ">= 14"\n')
    release = load_release(tmp_path)
    assert release.steps[0]["check"] == "sql/check.sql"
    (tmp_path / "release.toml").write_text(
        (tmp_path / "release.toml").read_text().replace("sql/check.sql", "sql/nope.sql"))
    with pytest.raises(ReleaseFormatError, match="check"):
        load_release(tmp_path)
