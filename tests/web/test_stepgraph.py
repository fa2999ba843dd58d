"""The step graph on the release page (web/stepgraph.py, releases/_graph.html)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hub.db import db
from hub.services.releases import create_release
from tests.web import test_pages_deployments as deployments_page
from tests.web.pages import Site
from web.stepgraph import graph_rows

TOML = """format = 1
[release]
product = "dag"
version = "1.0.0"

[[steps]]
name = "schema"
kind = "shell"
script = "s.sh"

[[steps]]
name = "static"
kind = "shell"
script = "s.sh"
after = []

[[steps]]
name = "smoke"
kind = "shell"
script = "s.sh"
after = ["schema", "static"]
"""


def test_rows_only_for_a_release_with_after() -> None:
    plain = [{"name": "a", "kind": "shell"}, {"name": "b", "kind": "shell"}]
    assert graph_rows(plain) is None
    rows = graph_rows([{"name": "a", "kind": "shell"}, {"name": "b", "kind": "sql", "after": []},
                       {"name": "c", "kind": "shell", "after": ["a", "b"]}], {3: "skipped"})
    assert rows is not None
    assert [(r["n"], r["after"], r["depth"], r["state"]) for r in rows] == [
        (1, [], 0, None), (2, [], 0, None), (3, [(1, "a"), (2, "b")], 1, "skipped")]


def test_release_page_shows_the_graph(site: Site, tmp_path: Path) -> None:
    root = tmp_path / "dag-1.0.0"
    root.mkdir()
    (root / "s.sh").write_text("true\n")
    (root / "release.toml").write_text(TOML)
    with site.app.app_context():
        create_release(site.ctx("dev"), root, create_missing_product=True)
        db.session.commit()
    html = site.client("view").get("/releases/dag/1.0.0").get_data(as_text=True)
    table = html.split('id="step-graph"', 1)[1].split("</table>", 1)[0]
    rows = table.split('data-step="')[1:]
    assert len(rows) == 3
    assert "nothing: starts first" in rows[0] and "nothing: starts first" in rows[1]
    assert "1 (schema), 2 (static)" in rows[2] and "graph-depth-1" in rows[2]


def test_deployment_page_shows_each_steps_state_in_the_graph(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hello 1.0.0 with its last step made independent of the others (after = []).
    src = tmp_path / "hello-1.0.0"
    shutil.copytree(deployments_page.HELLO, src)
    toml = src / "release.toml"
    toml.write_text(toml.read_text() + 'after = []\n')
    monkeypatch.setattr(deployments_page, "HELLO", src)
    d = deployments_page._setup(site, tmp_path)
    try:
        deployments_page._run_and_import(site, d, tmp_path)
    finally:
        d.agent.close()
    html = site.client("view-test").get(f"/deployments/{d.test_id}").get_data(as_text=True)
    table = html.split('id="step-graph"', 1)[1].split("</table>", 1)[0]
    rows = table.split('data-step="')[1:]
    assert len(rows) == 3
    assert "1 (write greeting)" in rows[1]
    assert "nothing: starts first" in rows[0] and "nothing: starts first" in rows[2]
    assert all('badge-succeeded">succeeded<' in r for r in rows)
