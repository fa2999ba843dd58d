"""The file step kind, and the undo fields of sql (down) and shell (rollback) steps."""

from __future__ import annotations

from typing import Any

import pytest

from bundle.errors import ReleaseFormatError
from bundle.steps import normalize_step, referenced_files, undo_support, validate_step

FILES = {"conf/app.conf", "sql/up.sql", "sql/down.sql", "scripts/do.sh", "scripts/undo.sh"}
RAW = {"name": "config", "kind": "file", "source": "conf/app.conf", "path": "/etc/app/app.conf"}


def test_a_file_step_normalizes_with_its_defaults() -> None:
    step = normalize_step(RAW, 0, FILES)

    assert step == {"name": "config", "kind": "file", "timeout_s": 600, "on_failure": "stop",
                    "secrets": [], "source": "conf/app.conf", "path": "/etc/app/app.conf",
                    "mode": "0644", "render": False, "params": {}, "follow_symlink": False}
    validate_step(step, 0)
    assert referenced_files(step) == ["conf/app.conf"]
    full = normalize_step({**RAW, "mode": "0600", "owner": "app", "group": "0", "render": True,
                           "params": {"port": "8080"}}, 0, FILES)
    validate_step(full, 0)
    assert (full["owner"], full["group"], full["params"]) == ("app", "0", {"port": "8080"})


@pytest.mark.parametrize(("changes", "words"), [
    ({"path": "etc/app.conf"}, ["field path", "is not absolute"]),
    ({"path": "/etc/../shadow"}, ["field path", "'..'"]),
    ({"path": "/etc//app.conf"}, ["field path", "empty"]),
    ({"path": "/etc/app/"}, ["field path", "names a directory"]),
    ({"path": "/etc/a\x00b"}, ["field path", "non-printable"]),
    ({"source": "conf/app.cnf"}, ["field source", "did you mean 'conf/app.conf'"]),
    ({"mode": "644"}, ["field mode", "4 octal digits"]),
    ({"mode": 420}, ["field mode", "4 octal digits"]),
    ({"mode": "4755"}, ["field mode", "set-id"]),
    ({"owner": "a b"}, ["field owner", "user or group"]),
    ({"params": {"port": "1"}}, ["field params", "unless render = true"]),
    ({"render": True, "params": {"1x": "1"}}, ["field params", "parameter name '1x'"]),
    ({"render": True, "params": {"port": 8080}}, ["field params", "must be a string"]),
    ({"path": None}, ["field path", "is missing; a file step needs source, path"]),
    ({"script": "scripts/do.sh"}, ["'script' is a field of sql, shell and undo steps"]),
])
def test_a_bad_file_step_is_refused_naming_the_field(changes: dict[str, Any],
                                                    words: list[str]) -> None:
    raw = {k: v for k, v in {**RAW, **changes}.items() if v is not None}

    with pytest.raises(ReleaseFormatError) as info:
        normalize_step(raw, 0, FILES)

    for word in words:
        assert word in str(info.value), str(info.value)
    assert "step 1 ('config')" in str(info.value)


def test_down_and_rollback_scripts_are_release_files_and_decide_undo_support() -> None:
    sql = {"name": "up", "kind": "sql", "engine": "postgres", "connection": "db",
           "script": "sql/up.sql"}
    shell = {"name": "do", "kind": "shell", "script": "scripts/do.sh"}

    plain_sql, plain_shell = normalize_step(sql, 0, FILES), normalize_step(shell, 1, FILES)
    down = normalize_step({**sql, "down": "sql/down.sql"}, 0, FILES)
    back = normalize_step({**shell, "rollback": "scripts/undo.sh"}, 1, FILES)

    assert "down" not in plain_sql and "rollback" not in plain_shell  # content hash unchanged
    validate_step(down, 0)
    validate_step(back, 1)
    assert referenced_files(down) == ["sql/up.sql", "sql/down.sql"]
    assert referenced_files(back) == ["scripts/do.sh", "scripts/undo.sh"]
    assert undo_support(down) == (True, "its down script sql/down.sql is run")
    assert undo_support(plain_sql) == (False, "a sql step without a down script cannot be "
                                              "undone")
    assert undo_support(back)[0] and not undo_support(plain_shell)[0]
    assert undo_support(normalize_step(RAW, 2, FILES))[0]
    with pytest.raises(ReleaseFormatError, match="field down: no release file is named"):
        normalize_step({**sql, "down": "sql/dwn.sql"}, 0, FILES)
    with pytest.raises(ReleaseFormatError, match="field rollback: is the step's script"):
        normalize_step({**shell, "rollback": "scripts/do.sh"}, 0, FILES)
    with pytest.raises(ReleaseFormatError, match="'down' is a field of sql steps"):
        normalize_step({**shell, "down": "sql/down.sql"}, 0, FILES)


def test_a_normalized_file_step_must_be_in_normalized_form() -> None:
    step = normalize_step(RAW, 0, FILES)

    with pytest.raises(ReleaseFormatError, match="field path"):
        validate_step({**step, "path": "relative.conf"}, 0)
    with pytest.raises(ReleaseFormatError, match="field follow_symlink: is missing"):
        validate_step({k: v for k, v in step.items() if k != "follow_symlink"}, 0)


def test_an_undo_step_names_a_bundle_and_a_step_number() -> None:
    step = normalize_step({"name": "undo 2", "kind": "undo", "bundle": "b7-1f2e", "step": 2,
                           "connection": "kube"}, 0, FILES)

    validate_step(step, 0)
    assert step["bundle"] == "b7-1f2e" and referenced_files(step) == []
    assert undo_support(step)[0] is False
    for changes, field in (({"bundle": "../x"}, "bundle"), ({"step": 0}, "step"),
                           ({"step": True}, "step"), ({"step": "2"}, "step")):
        with pytest.raises(ReleaseFormatError, match=f"field {field}: "):
            normalize_step({"name": "u", "kind": "undo", "bundle": "b7", "step": 2, **changes},
                           0, FILES)


@pytest.mark.parametrize(("fields", "words"), [
    ({"engine": "postgres", "script": "sql/down.sql"}, "field connection: is missing"),
    ({"engine": "postgres", "connection": "db"}, "field script: is missing"),
    ({"script": "sql/down.sql"}, "field script: needs engine"),
    ({"engine": "mysql", "interpreter": "bash", "script": "sql/down.sql", "connection": "db"},
     "not both"),
    ({"args": ["x"]}, "field args: is only for a shell rollback script"),
])
def test_an_undo_step_runs_a_script_only_as_a_down_or_rollback(fields: dict[str, Any],
                                                              words: str) -> None:
    with pytest.raises(ReleaseFormatError, match=words):
        normalize_step({"name": "u", "kind": "undo", "bundle": "b7", "step": 1, **fields}, 0,
                       FILES)
