"""``tiangong remote run …`` with real processes: a real ``hub serve`` with its live server,
a real ``agent run`` connected to it, and the CLI talking to the hub's HTTP API with
carol's personal token (developer and operator). A run the environment's rule wants an
approval for waits, submitted, exit 1, nothing queued; a token without the ``deploy`` scope
is refused and nothing is created; after bob's approval ``remote run ship --follow`` ships
it and prints the live log and the result; under a 0-approval ad-hoc policy ``remote run
shell --follow`` goes at once. Every change is audited as carol, via her token."""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path
from typing import Any, ClassVar

from tests.e2e.conftest import run, wait_for
from tests.e2e.test_live_processes import DEADLINE, Site, free_port
from tests.e2e.test_live_processes import site as site  # the fixture
from tests.e2e.test_remote_governance import token_file
from tests.fixtures.kube import KubeServer


def test_remote_runs_wait_ship_and_follow_live(site: Site, tmp_path: Path,
                                               kube_server: KubeServer,
                                               kube_namespace: str) -> None:
    site.hub("users", "grant", "carol", "developer")
    with (site.home / "agent.toml").open("a") as fh:
        fh.write(f'\n[connections.kube]\ntype = "kubernetes"\n'
                 f'kubeconfig = "{kube_server.kubeconfig}"\n')
    port = free_port()
    site.start_hub("hub.log", http_port=port)
    site.start_agent()
    wait_for(site.seen, DEADLINE, "the agent to connect to the live server")
    carol = token_file(site.data, tmp_path, "carol", "carol-run",
                       ["releases:write", "deploy", "read"])
    no_deploy = token_file(site.data, tmp_path, "carol", "carol-write", ["releases:write"])

    url = f"http://127.0.0.1:{port}"

    def remote(token: Path, *args: str) -> Any:
        return run("remote", "--url", url, "--token-file", str(token), "run", *args,
                   check=False, timeout=DEADLINE + 30)

    script = tmp_path / "hello.sh"
    script.write_text('echo "hello from $(hostname)"\necho second line\n')
    follow = ("--follow", "--follow-timeout", f"{int(DEADLINE)}s")

    def state() -> Any:
        return (site.sql("SELECT version, state FROM releases ORDER BY id"),
                site.sql("SELECT id, state FROM deployments ORDER BY id"))

    refused = remote(no_deploy, "shell", "--file", str(script), "--agent", "site-01")
    assert refused.returncode == 1 and "(403 insufficient_scope)" in refused.stderr
    assert state() == ([], [])

    # plant-a's rule wants 1 approval: created and submitted, then it waits.
    waits = remote(carol, "shell", "--file", str(script), "--agent", "site-01",
                   "--reason", "say hello", *follow)
    assert waits.returncode == 1, waits.stdout + waits.stderr
    made = re.search(r"^release adhoc (\S+) created and submitted \(shell hello\.sh for agent "
                     r"site-01, environment plant-a\)$", waits.stdout, re.M)
    assert made is not None, waits.stdout
    version = made.group(1)
    assert (f"error: release adhoc {version} not shipped: environment plant-a requires 1 "
            "approval, it has 0; waiting for 1 approval") in waits.stderr
    assert state() == ([(version, "submitted")], [])
    early = remote(carol, "ship", version, "--agent", "site-01")
    assert early.returncode == 1 and "(409 conflict)" in early.stderr
    assert state() == ([(version, "submitted")], [])

    site.hub("releases", "approve", "adhoc", version, user="bob")
    shipped = remote(carol, "ship", version, "--agent", "site-01", *follow, "--json")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    doc = json.loads(shipped.stdout)
    assert (doc["version"], doc["state"], doc["done"]) == (version, "succeeded", True)
    assert any("second line" in line["text"] for line in doc["lines"])
    assert doc["result"]["status"] == "succeeded"

    # Under a 0-approval ad-hoc policy, at once; as a person reads it.
    site.hub("environments", "adhoc-policy", "plant-a", "--required", "0")
    went = remote(carol, "shell", "--file", str(script), "--agent", "site-01", *follow)
    assert went.returncode == 0, went.stdout + went.stderr
    assert re.search(r"^\[step 1 \w+\] .*second line", went.stdout, re.M), went.stdout
    assert re.search(r"^deployment \d+: succeeded", went.stdout, re.M), went.stdout
    assert re.search(r"^  step 1 run hello\.sh: succeeded", went.stdout, re.M), went.stdout

    created = site.audit("release.create")
    assert [e["actor"] for e in created] == ["carol", "carol"]
    assert all(json.loads(e["details"])["via"].startswith("api-token:tgp_") for e in created)
    assert [e["actor"] for e in site.audit("deployment.queue")] == ["carol", "carol"]
    assert len(site.audit("release.policy_approve")) == 1
    _templates_part(site, tmp_path, url, carol, state, follow)
    _k8s_template(tmp_path / "templates", url, carol, kube_server, kube_namespace, follow)

    # Last (a bundle on media chains the agent's next live ones after it): `--out` writes
    # the bundle the hub exported into DIR, as `tiangong run --out` does; not with --follow.
    stick = tmp_path / "stick"
    both = remote(carol, "shell", "--file", str(script), "--agent", "site-01", "--out",
                  str(stick), *follow)
    assert both.returncode == 2 and "--follow and --out exclude each other" in both.stderr
    media = remote(carol, "shell", "--file", str(script), "--agent", "site-01", "--out",
                   str(stick), "--expires", "2d")
    assert media.returncode == 0, media.stdout + media.stderr
    said = re.search(r"^adhoc (\S+): deployment (\d+), sequence \d+ for agent site-01: "
                     r"(\S+\.tgb)$", media.stdout, re.M)
    assert said is not None, media.stdout
    assert Path(said.group(3)).parent == stick and Path(said.group(3)).is_file()
    assert sorted(p.suffix for p in stick.iterdir()) == [".tgb", ".txt"]  # and its INDEX
    assert site.sql(f"SELECT state FROM deployments WHERE id = {said.group(2)}") == [
        ("exported",)]


TEMPLATE = """name = "greet"
kind = "shell"
file = "greet.sh"
description = "say hello to someone"
[[params]]
name = "who"
type = "string"
max_length = 20
[[params]]
name = "times"
type = "int"
min = 1
max = 3
default = 1
"""


def _templates_part(site: Site, tmp: Path, url: str, carol: Path, state: Any,
                    follow: tuple[str, ...]) -> None:
    """``remote templates add|list|show|run|release``: a bad value creates nothing; a good
    one runs live under the policy, the value reaching the script as PARAM_WHO."""
    folder = tmp / "templates"
    folder.mkdir()
    (folder / "greet.sh").write_text('for _ in $(seq "$PARAM_TIMES"); do echo "hi $PARAM_WHO"; '
                                     "done\n")
    (folder / "greet.toml").write_text(TEMPLATE)

    def templates(*args: str) -> Any:
        return run("remote", "--url", url, "--token-file", str(carol), "templates",
                   *args, check=False, timeout=DEADLINE + 30)

    added = templates("add", str(folder / "greet.toml"))
    assert added.stdout.strip() == "template greet version 1 added (shell, 2 parameter(s))"
    assert "say hello to someone" in templates("list").stdout
    shown = templates("show", "greet@1").stdout
    assert "  parameter times (int 1..3, default 1)" in shown and "seq" in shown
    assert templates("show", "greet@2").returncode == 1

    before = state()
    bad = templates("run", "greet", "--agent", "site-01", "--param", "who=world",
                    "--param", "times=9")
    assert bad.returncode == 1
    assert "template greet v1: parameter times: 9 is above the maximum 3" in bad.stderr
    assert state() == before and site.audit("template.run") == []

    good = templates("run", "greet", "--agent", "site-01", "--param", "who=o'brien $x",
                     "--param", "times=2", *follow)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "created and submitted (template greet v1 for agent site-01" in good.stdout
    assert good.stdout.count("hi o'brien $x") == 2, good.stdout
    [event] = site.audit("template.run")
    assert event["actor"] == "carol"
    assert json.loads(event["details"])["values"] == {"who": "o'brien $x", "times": 2}

    out = tmp / "greet-release"
    written = templates("release", "greet", str(out), "--product", "ops", "--version",
                        "1.0.0", "--param", "who=ops")
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in out.iterdir()) == ["release.toml", "run.sh"]
    assert 'PARAM_WHO = "ops"' in (out / "release.toml").read_text()
    _http_template(site, folder, templates, follow)


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request's path and body; answers 204."""

    seen: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append((self.path, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _http_template(site: Site, folder: Path, templates: Any,
                   follow: tuple[str, ...]) -> None:
    """An http template run live against a local server: the URL value percent-encoded, the
    body value a JSON string, whatever they hold."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (folder / "note.json").write_text('{"note": {{note}}, "id": {{id}}}\n')
        (folder / "note.toml").write_text(
            'name = "post-note"\nkind = "http"\nfile = "note.json"\n[step]\n'
            f'url = "http://127.0.0.1:{server.server_address[1]}/notes/{{{{id}}}}"\n'
            'method = "POST"\nexpect = [204]\n'
            '[[params]]\nname = "id"\ntype = "string"\n'
            '[[params]]\nname = "note"\ntype = "string"\n')
        added = json.loads(templates("add", str(folder / "note.toml"), "--json").stdout)
        assert (added["kind"], added["version"]) == ("http", 1)
        hostile = 'say "hi"\n}, "id": "evil'
        went = templates("run", "post-note", "--agent", "site-01", "--param", "id=a/b?c",
                         "--param", f"note={hostile}", *follow)
        assert went.returncode == 0, went.stdout + went.stderr
        ((path, body),) = _Recorder.seen
        assert path == "/notes/a%2Fb%3Fc"
        assert json.loads(body) == {"note": hostile, "id": "a/b?c"}
    finally:
        server.shutdown()
        server.server_close()


MANIFEST = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{name}}
  labels:
    tier: {{tier}}
data:
  note: {{note}}   # whatever it holds
"""


def _k8s_template(folder: Path, url: str, carol: Path, kube: KubeServer, namespace: str,
                  follow: tuple[str, ...]) -> None:
    """A k8s template run live on the real kube-apiserver: a hostile value is the object's
    data, byte for byte (quotes, a new line, '#', ':', braces, non-ASCII), and adds no
    key."""
    (folder / "conf.yaml").write_text(MANIFEST)
    (folder / "conf.toml").write_text(
        f'name = "app-conf"\nkind = "k8s"\nfile = "conf.yaml"\n[step]\n'
        f'connection = "kube"\nnamespace = "{namespace}"\n'
        '[[params]]\nname = "name"\ntype = "string"\n'
        '[[params]]\nname = "tier"\ntype = "enum"\nchoices = ["web", "db"]\n'
        '[[params]]\nname = "note"\ntype = "string"\n')

    def templates(*args: str) -> Any:
        return run("remote", "--url", url, "--token-file", str(carol), "templates", *args,
                   check=False, timeout=DEADLINE + 30)

    added = templates("add", str(folder / "conf.toml"))
    assert added.returncode == 0, added.stderr
    hostile = "it's \"quoted\" # not a comment\nevil: {x: 1}\n- ü 😀"
    went = templates("run", "app-conf", "--agent", "site-01", "--param", "name=app-conf",
                     "--param", "tier=web", "--param", f"note={hostile}", *follow)
    assert went.returncode == 0, went.stdout + went.stderr
    made = kube.must("GET", f"/api/v1/namespaces/{namespace}/configmaps/app-conf")
    assert made["data"] == {"note": hostile}
    assert made["metadata"]["labels"] == {"tier": "web"}
