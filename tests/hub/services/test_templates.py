"""Job templates (hub.services.templates): definitions stored in numbered versions by
developers (audited), refused with the file, the parameter and the rule named; a template
run checks its values before anything is created (no release, no deployment, no sequence)
and renders SQL values as literals, shell values as environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.db import AuditEvent, Deployment, JobTemplate, Release
from hub.errors import NotFoundError, PermissionDeniedError, ValidationError
from hub.services.agents import enroll_agent
from hub.services.templates import (
    add_template,
    get_template,
    instantiate,
    list_templates,
    release_of,
    run_template,
)
from tests.hub.conftest import World
from tests.hub.services.test_deployments import request

SQL_DEF = """name = "purge-sessions"
kind = "sql"
file = "purge.sql"
description = "delete old sessions"
[step]
engine = "{engine}"
connection = "app-db"
[[params]]
name = "days"
type = "int"
min = 1
max = 365
default = 30
[[params]]
name = "who"
type = "string"
"""
SQL = "DELETE FROM sessions WHERE age > {{days}} AND owner = {{ who }};\n"


def _definition(tmp: Path, text: str = SQL_DEF, script: str = SQL, file: str = "purge.sql",
                engine: str = "postgres") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / file).write_text(script)
    path = tmp / "template.toml"
    path.write_text(text.replace("{engine}", engine))
    return path


def _count(world: World, table: type) -> int:
    return world.session.scalar(select(func.count()).select_from(table)) or 0


def _actions(world: World) -> list[tuple[str, str, dict[str, Any]]]:
    rows = world.session.scalars(select(AuditEvent).where(AuditEvent.action.like("template.%"))
                                 .order_by(AuditEvent.seq))
    return [(e.action, e.object_id, json.loads(e.details)) for e in rows]


def test_versions_are_numbered_listed_and_audited(world: World, tmp_path: Path) -> None:
    first = add_template(world.ctx("dev"), _definition(tmp_path / "a"))
    second = add_template(world.ctx("dev"), _definition(tmp_path / "b", script="SELECT 1;\n"))
    assert (first.version, second.version, second.kind) == (1, 2, "sql")
    assert [t.version for t in list_templates(world.ctx("view"))] == [2]
    assert get_template(world.ctx("view"), "purge-sessions", 1).content == SQL.encode()
    assert [(a, o) for a, o, _ in _actions(world)] == [
        ("template.add", "purge-sessions v1"), ("template.add", "purge-sessions v2")]
    with pytest.raises(NotFoundError, match="template 'purge-sessions' version 3 not found"):
        get_template(world.ctx("view"), "purge-sessions", 3)
    with pytest.raises(PermissionDeniedError):
        add_template(world.ctx("op"), _definition(tmp_path / "c"))
    assert _count(world, JobTemplate) == 2


@pytest.mark.parametrize(("text", "script", "message"), [
    (SQL_DEF.replace('type = "string"', 'type = "secret-ref"'), SQL,
     "parameter who: a SQL template cannot take a secret-ref"),
    (SQL_DEF, SQL + "SELECT {{table}};\n",
     "file purge.sql: placeholder {{table}} names no parameter \\(declared: days, who\\)"),
    (SQL_DEF.replace('connection = "app-db"', 'connection = "app db"'), SQL,
     "field connection"),
    (SQL_DEF.replace('kind = "sql"', 'kind = "ftp"'), SQL,
     "kind must be one of sql, shell, k8s, http"),
    (SQL_DEF.replace('[step]', 'colour = "red"\n[step]'), SQL, "unknown key\\(s\\) colour"),
    (SQL_DEF.replace('[step]', '[step]\nscript = "x.sql"'), SQL,
     "\\[step\\] may not set script"),
    (SQL_DEF, "DELETE FROM sessions WHERE age > {{days}};\n-- by {{who}}\n",
     "file purge.sql: line 2: placeholder {{who}} is inside quoted text, a comment"),
    (SQL_DEF, "DELETE FROM sessions WHERE age > {{days}} AND owner = '{{who}}';\n",
     "file purge.sql: line 1: placeholder {{who}} is inside quoted text"),
])
def test_bad_definitions_are_refused_naming_the_rule(world: World, tmp_path: Path, text: str,
                                                      script: str, message: str) -> None:
    path = _definition(tmp_path, text, script)
    with pytest.raises(ValidationError, match=f"{path}.*{message}"):
        add_template(world.ctx("dev"), path)
    assert _count(world, JobTemplate) == 0 and _actions(world) == []


def test_a_bad_value_creates_nothing_and_a_good_one_an_adhoc_run(
        world: World, tmp_path: Path) -> None:
    enroll_agent(world.ctx("admin"), "test", request("t1", "test-1"))
    template = add_template(world.ctx("dev"), _definition(tmp_path / "def", engine="mysql"))
    with pytest.raises(ValidationError, match=(
            r"^template purge-sessions v1: parameter days: 400 is above the maximum 365$")):
        instantiate(template, {"days": "400", "who": "x"})
    with pytest.raises(ValidationError, match="parameter who is required"):
        instantiate(template, {})
    assert _count(world, Release) == 0 and _count(world, Deployment) == 0
    instance = instantiate(template, {"who": "o'brien"})
    assert instance.content.decode() == (
        "DELETE FROM sessions WHERE age > 30 AND owner = _utf8mb4 X'6f27627269656e';\n")
    work = tmp_path / "work"
    work.mkdir()
    made = run_template(world.ctx("admin"), instance, "test-1", work)
    rel = made.release
    assert (rel.product.name, rel.state) == ("adhoc", "submitted")
    assert rel.steps[0]["name"] == "purge-sessions v1" and rel.steps[0]["engine"] == "mysql"
    assert "from template purge-sessions v1" in rel.description
    action, obj, details = _actions(world)[-1]
    assert (action, obj, details["values"]) == ("template.run", "purge-sessions v1",
                                                {"days": 30, "who": "o'brien"})
    assert details["release"] == rel.label


def test_shell_values_are_environment_variables(world: World, tmp_path: Path) -> None:
    text = ('name = "rotate"\nkind = "shell"\nfile = "rotate.sh"\n[step]\ninterpreter = "sh"\n'
            'env = { LOG = "1" }\n[[params]]\nname = "keep"\ntype = "int"\n'
            '[[params]]\nname = "token"\ntype = "secret-ref"\n'
            'choices = ["api-token"]\n')
    template = add_template(world.ctx("dev"), _definition(
        tmp_path, text, 'echo "keeping $PARAM_KEEP"\n', "rotate.sh"))
    instance = instantiate(template, {"keep": "3", "token": "api-token"})
    assert instance.content == b'echo "keeping $PARAM_KEEP"\n'  # nothing spliced in
    assert instance.step["env"] == {"LOG": "1", "PARAM_KEEP": "3", "PARAM_TOKEN": "api-token"}
    assert instance.step["secrets"] == ["api-token"]
    files = release_of(world.ctx("dev"), instance, "ops", "1.0.0")
    assert b'PARAM_KEEP = "3"' in files["release.toml"] and files["run.sh"] == instance.content
    assert _actions(world)[-1][0] == "template.release"


def test_a_template_name_at_a_version_that_is_no_number_is_a_usage_error() -> None:
    """'purge@\u00b2' (isdigit() but not int()) raised a raw ValueError, and a version past
    the database's integer an OverflowError at the query."""
    import click

    from tiangong.run_text import split_name

    assert split_name("purge@3") == ("purge", 3) and split_name("purge") == ("purge", None)
    for bad in ("purge@\u00b2", "purge@99999999999999999999", "purge@", "purge@-1"):
        with pytest.raises(click.UsageError, match="NAME@VERSION"):
            split_name(bad)


def test_templates_show_escapes_what_could_hide_a_line_of_the_file(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`hub templates show` / `remote templates show` is how an operator reads a template
    before running it: its file went to the terminal raw, so an author's '\\x1b[1A\\x1b[2K'
    or '\\r' erased the DROP line it stood on and the reader saw only 'SELECT 2;'. Lines
    and tabs stay; escapes, carriage returns and bidi controls are shown as escapes."""
    from tiangong.run_text import echo_template

    echo_template({"name": "p", "version": 1, "kind": "sql", "created_by": "dev",
                   "description": "old\u202esessions", "described": ["days int"],
                   "file": "p.sql", "sha256": "00",
                   "text": "SELECT 1;\n\tDROP TABLE s; -- \x1b[1A\x1b[2K\rSELECT 2;\n"})
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert "SELECT 1;\n\tDROP TABLE s; -- \\x1b[1A\\x1b[2K\\x0dSELECT 2;\n" in out
    assert "old\\u202esessions" in out


def test_a_followed_run_shows_what_the_site_sent_without_obeying_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`tiangong run … --follow` / `remote run … --follow` print the lines a site's script
    wrote and its result's summaries: an escape sequence there (a tool's colours, a row of
    the site's database, a hostile script: '\\x1b]52;c;…' writes the operator's clipboard)
    reached the operator's terminal raw. Shown escaped; tabs kept."""
    from tiangong.run_text import echo_line, echo_outcome

    echo_line({"step": 0, "stream": "stdout", "text": "row\t\x1b]52;c;cm0gLXJmIH4=\x07\r\n"})
    echo_outcome(7, "succeeded", True, {
        "summary": "ok\x1b[2J", "problem": None,
        "steps": [{"step": 1, "name": "one\x1b[8m", "status": "succeeded", "exit_code": 0,
                   "summary": "done\rFAILED"}]}, 1, "show")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert "[step 1 stdout] row\t\\x1b]52;c;cm0gLXJmIH4=\\x07\n" in out
    assert "deployment 7: succeeded — ok\\x1b[2J" in out
    assert "  step 1 one\\x1b[8m: succeeded (exit 0) — done\\x0dFAILED" in out


def test_a_release_of_a_name_no_release_may_have_is_refused(world: World,
                                                            tmp_path: Path) -> None:
    """`templates release` answered an unusable release.toml for a product or version that
    `releases create` would refuse; it is refused by the same rule, with the same message,
    and nothing is audited as released."""
    template = add_template(world.ctx("dev"), _definition(tmp_path))
    instance = instantiate(template, {"who": "x"})
    before = _actions(world)
    for product, version, message in (
            ("Ops!", "1.0.0", "[release] product = 'Ops!' is not valid: lower-case letters"),
            ("ops", "../1", "[release] version = '../1' is not valid: letters, digits"),
            ("ops", "", "[release] version = '' is not valid: letters, digits")):
        with pytest.raises(ValidationError) as refused:
            release_of(world.ctx("dev"), instance, product, version)
        assert message in str(refused.value)
    assert _actions(world) == before and _count(world, Release) == 0
