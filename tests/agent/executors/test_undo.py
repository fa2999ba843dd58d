"""The undo step: k8s objects put back on the real API server, files put back, no record.

A k8s step runs with an undo directory (as the agent's runner gives it), then an ``undo`` step
naming that bundle and step reverses it: an object the release modified gets its recorded
state back, an object (and a namespace) the release created is deleted.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

from agent.executors import get_executor
from agent.executors.base import Connection, StepContext, StepLog, StepOutcome
from agent.executors.undodata import UNDO_RECORD
from bundle.steps import normalize_step
from tests.agent.executors.k8scase import Harness
from tests.agent.executors.sqlcase import *  # noqa: F403  (the db fixture)
from tests.agent.executors.sqlcase import Db, Runner
from tests.fixtures.kube import KubeServer


def _undo_ctx(tmp: Path, undo_root: Path, bundle: str, number: int,
              connection: Connection | None = None, **fields: Any) -> StepContext:
    step = normalize_step({"name": f"undo {number}", "kind": "undo", "bundle": bundle,
                           "step": number, **fields, **({"connection": connection.name}
                                                        if connection else {})}, 0,
                          {"sql/down.sql", "scripts/rollback.sh"})
    get_executor("undo").validate(step)
    work = tmp / "undo-work"
    work.mkdir(exist_ok=True)
    release = {"product": "billing", "version": "2.4.0-rollback-1"}
    return StepContext(bundle_id="rollback-1", release=release, index=0, step=step, files={},
                       workdir=work, connection=connection, secrets={}, log=StepLog(),
                       deadline=time.monotonic() + 60, cancel=threading.Event(),
                       undo_dir=undo_root / "rollback-1" / "001")


def _cm(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def test_a_k8s_step_is_undone_on_the_real_api_server(
        tmp_path: Path, kube_server: KubeServer, kube_namespace: str) -> None:
    ns = kube_namespace
    base = f"/api/v1/namespaces/{ns}/configmaps"
    kube_server.must("POST", base, {**_cm("settings", {"mode": "old"}),
                                    "metadata": {"name": "settings", "labels": {"team": "a"}}})
    new_ns = f"{ns}-made"
    harness = Harness(tmp_path, kube_server.kubeconfig, ns)
    manifest = harness.stage("k8s/app.yaml", _cm("settings", {"mode": "new", "extra": "1"}),
                             _cm("created", {"k": "v"}),
                             {"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": new_ns}},
                             {**_cm("inside", {"k": "v"}),
                              "metadata": {"name": "inside", "namespace": new_ns}})
    step = harness.step([manifest])
    undo_root = tmp_path / "undo"
    ctx = StepContext(bundle_id="app-1", release={}, index=0, step=step, files=harness.files,
                      workdir=tmp_path, connection=harness.connection, secrets={},
                      log=StepLog(), deadline=time.monotonic() + 60, cancel=threading.Event(),
                      undo_dir=undo_root / "app-1" / "001")
    try:
        applied: StepOutcome = get_executor("k8s").run(ctx)
        assert applied.status == "succeeded", applied.summary
        assert kube_server.must("GET", f"{base}/settings")["data"] == {"mode": "new",
                                                                      "extra": "1"}
        record = json.loads((undo_root / "app-1" / "001" / UNDO_RECORD).read_text())
        assert [o["name"] for o in record["objects"]] == [new_ns, "settings", "created",
                                                          "inside"]
        assert [o["before"] is None for o in record["objects"]] == [True, False, True, True]

        undo = _undo_ctx(tmp_path, undo_root, "app-1", 1, harness.connection)
        outcome = get_executor("undo").run(undo)

        assert outcome.status == "succeeded", outcome.summary
        assert "1 object(s) restored, 3 deleted" in outcome.summary
        settings = kube_server.must("GET", f"{base}/settings")
        assert settings["data"] == {"mode": "old"}
        assert settings["metadata"]["labels"] == {"team": "a"}
        assert kube_server.get(f"{base}/created") is None
        gone = kube_server.get(f"/api/v1/namespaces/{new_ns}")
        assert gone is None or gone["status"]["phase"] == "Terminating"
    finally:
        kube_server.request("DELETE", f"/api/v1/namespaces/{new_ns}")


def test_an_undo_step_restores_a_file_and_says_when_nothing_was_recorded(
        tmp_path: Path) -> None:
    dest = tmp_path / "app.conf"
    dest.write_text("old")
    source = tmp_path / "new.conf"
    source.write_text("new")
    undo_root = tmp_path / "undo"
    step = normalize_step({"name": "conf", "kind": "file", "source": "new.conf",
                           "path": str(dest)}, 0, {"new.conf"})
    ctx = StepContext(bundle_id="app-1", release={}, index=1, step=step,
                      files={"new.conf": source}, workdir=tmp_path, connection=None,
                      secrets={}, log=StepLog(), deadline=time.monotonic() + 60,
                      cancel=threading.Event(), undo_dir=undo_root / "app-1" / "002")
    assert get_executor("file").run(ctx).status == "succeeded"
    assert dest.read_text() == "new"

    outcome = get_executor("undo").run(_undo_ctx(tmp_path, undo_root, "app-1", 2))
    nothing = get_executor("undo").run(_undo_ctx(tmp_path, undo_root, "app-1", 3))

    assert outcome.status == "succeeded" and dest.read_text() == "old"
    assert outcome.summary == f"step 2 of bundle app-1 undone: restored the previous {dest}"
    assert nothing.status == "succeeded" and nothing.details == {"undone": False}
    assert "step 3 of bundle app-1 recorded no undo data" in nothing.summary
    no_dir = dataclasses.replace(_undo_ctx(tmp_path, undo_root, "app-1", 2), undo_dir=None)
    refused = get_executor("undo").run(no_dir)
    assert refused.status == "failed" and dest.read_text() == "old"


def test_a_sql_step_is_undone_by_its_down_script_on_the_real_server(
        tmp_path: Path, db: Db) -> None:
    runner = Runner(tmp_path, db)
    undo_root = tmp_path / "undo"
    up = runner.ctx("CREATE TABLE invoices (id INT);\nINSERT INTO invoices VALUES (1);\n",
                    bundle_id="billing-1", step={"down": "sql/down.sql"})
    up = dataclasses.replace(up, undo_dir=undo_root / "billing-1" / "001")
    assert get_executor("sql").run(up).status == "succeeded"
    assert "invoices" in db.tables()
    assert json.loads((undo_root / "billing-1" / "001" / UNDO_RECORD).read_text()) == {
        "kind": "sql", "script": "sql/down.sql"}
    down = tmp_path / "down.sql"
    down.write_text("DROP TABLE invoices;\n")
    ctx = _undo_ctx(tmp_path, undo_root, "billing-1", 1, up.connection,
                    engine=db.engine, script="sql/down.sql")
    ctx = dataclasses.replace(ctx, files={"sql/down.sql": down})

    outcome = get_executor("undo").run(ctx)
    never = get_executor("undo").run(dataclasses.replace(
        _undo_ctx(tmp_path, undo_root, "billing-1", 2, up.connection, engine=db.engine,
                  script="sql/down.sql"), files={"sql/down.sql": down}))

    assert outcome.status == "succeeded", outcome.summary
    assert outcome.summary.startswith("step 1 of bundle billing-1: sql/down.sql succeeded")
    assert "invoices" not in db.tables()
    assert never.status == "succeeded" and never.details == {"undone": False}


def test_a_shell_step_is_undone_by_its_rollback_script(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.write_text("made by the release")
    undo_root = tmp_path / "undo"
    script = tmp_path / "rollback.sh"
    script.write_text('rm "$1"\necho "removed $1"\n')
    undone = _undo_ctx(tmp_path, undo_root, "ops-1", 1, None, interpreter="bash",
                       script="scripts/rollback.sh", args=[str(marker)])
    undone = dataclasses.replace(undone, files={"scripts/rollback.sh": script})
    # the shell step of ops-1 recorded, before it ran, that it ran here
    shell = {"name": "make marker", "kind": "shell", "timeout_s": 60, "on_failure": "stop",
             "secrets": [], "script": "scripts/do.sh", "interpreter": "bash", "env": {},
             "secrets_via": "env", "args": [], "rollback": "scripts/rollback.sh"}
    do = tmp_path / "do.sh"
    do.write_text("true\n")
    ran = dataclasses.replace(undone, step=shell, files={"scripts/do.sh": do},
                              undo_dir=undo_root / "ops-1" / "001")
    assert get_executor("shell").run(ran).status == "succeeded"

    outcome = get_executor("undo").run(undone)

    assert outcome.status == "succeeded", outcome.summary
    assert not marker.exists()
    assert f"removed {marker}" in undone.log.text()
    plain = {k: v for k, v in shell.items() if k != "rollback"}
    ran_plain = dataclasses.replace(ran, step=plain, undo_dir=undo_root / "ops-1" / "002")
    assert get_executor("shell").run(ran_plain).status == "succeeded"
    cannot = get_executor("undo").run(_undo_ctx(tmp_path, undo_root, "ops-1", 2))
    assert cannot.status == "failed"
    assert cannot.summary == ("not undone: step 2 of bundle ops-1 ran here and cannot be "
                              "undone (a shell step without a rollback script)")


def test_a_k8s_step_whose_undo_data_cannot_be_recorded_applies_nothing(
        tmp_path: Path, kube_server: KubeServer, kube_namespace: str) -> None:
    harness = Harness(tmp_path, kube_server.kubeconfig, kube_namespace)
    step = harness.step([harness.stage("k8s/cm.yaml", _cm("never", {"k": "v"}))])
    blocker = tmp_path / "undo"
    blocker.write_text("a file where the undo directory should be")
    ctx = StepContext(bundle_id="app-1", release={}, index=0, step=step, files=harness.files,
                      workdir=tmp_path, connection=harness.connection, secrets={},
                      log=StepLog(), deadline=time.monotonic() + 60, cancel=threading.Event(),
                      undo_dir=blocker / "app-1" / "001")

    outcome = get_executor("k8s").run(ctx)

    assert outcome.status == "failed"
    assert f"cannot record undo data in {blocker / 'app-1' / '001'}" in outcome.summary
    assert "nothing was applied" in outcome.summary
    path = f"/api/v1/namespaces/{kube_namespace}/configmaps/never"
    assert kube_server.get(path) is None
