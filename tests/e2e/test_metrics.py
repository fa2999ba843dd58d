"""Metrics and health of real hub processes (docs/scale.md, "Metrics and health").

``tiangong hub serve`` with two gunicorn workers (prometheus-client's multiprocess mode) and
its live child; ``/metrics``, ``/healthz`` and ``/readyz`` are scraped over HTTP from the
web port and from the live port, before and after an export to media (the CLI, a third
process) and a live delivery whose result is imported; the multiprocess files of a killed
predecessor are swept at start and the server's own removed when it stops. The values
asserted are counts the test caused; nothing is timed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import wait_for
from tests.e2e.test_live_processes import DEADLINE, Site
from tests.e2e.test_live_processes import site as site  # the fixture
from tests.e2e.test_live_serve import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET on 127.0.0.1."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - http://127.0.0.1
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(url: str) -> Samples:
    status, content_type, body = get(url)
    assert status == 200 and content_type.startswith("text/plain; version="), (status, body)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def start_serve(s: Site, http_port: int) -> subprocess.Popen[bytes]:
    """``hub serve`` with two gunicorn workers (multiprocess metrics) and its live child."""
    return s.start_hub("hub.log", http_port=http_port, workers=2)


def test_metrics_and_health_of_a_real_hub_change_with_exports_and_imports(site: Site) -> None:
    http = free_port()
    web, live = f"http://127.0.0.1:{http}", f"http://127.0.0.1:{site.live_port}"
    site.release("1.0.0")
    site.release("2.0.0")
    # What a `hub serve` killed earlier left behind (its pid is gone): swept at start.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = site.data / "run" / f"metrics-web-{dead.pid}"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"")
    hub = start_serve(site, http)
    assert not stale.exists()
    assert [p.name for p in (site.data / "run").glob("metrics-web-*")] == [
        f"metrics-web-{hub.pid}"]

    before = scrape(f"{web}/metrics")
    assert value(before, "tiangong_database_up") == 1
    assert value(before, "tiangong_bundles_exported_total") == 0
    assert value(before, "tiangong_agents", environment="plant-a", presence="never") == 1
    head = value(before, "tiangong_audit_head_seq")
    assert head > 0

    # An export to media by the CLI (another process) shows in the web's figures.
    site.queue("1.0.0")
    queued = scrape(f"{web}/metrics")
    assert value(queued, "tiangong_deployments", environment="plant-a", state="queued") == 1
    assert ("tiangong_queue_oldest_age_seconds", (("environment", "plant-a"),)) in queued
    usb = site.tmp / "usb"
    site.hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    exported = scrape(f"{web}/metrics")
    assert value(exported, "tiangong_bundles_exported_total") == 1
    assert value(exported, "tiangong_deployments", environment="plant-a", state="exported") == 1
    assert value(exported, "tiangong_deployments", environment="plant-a", state="queued") == 0
    assert ("tiangong_queue_oldest_age_seconds", (("environment", "plant-a"),)) not in exported
    assert value(exported, "tiangong_audit_head_seq") > value(queued, "tiangong_audit_head_seq")

    # A live delivery and the import of its result, in the live process's own figures.
    quiet = scrape(f"{live}/metrics")
    assert value(quiet, "tiangong_live_connected_agents") == 0
    assert value(quiet, "tiangong_live_transfer_bytes_total", direction="out") == 0
    # The stick reaches the site (sequence 1); its result travels back live.
    (bundle,) = usb.glob("*.tgb")
    inbox = site.home / "inbox"
    shutil.copyfile(bundle, inbox / (bundle.name + ".part"))
    os.replace(inbox / (bundle.name + ".part"), inbox / bundle.name)
    config = site.home / "agent.toml"
    config.write_text(config.read_text() + '\n[metrics]\ntextfile = "agent.prom"\n')
    site.start_agent()
    wait_for(lambda: value(scrape(f"{live}/metrics"), "tiangong_live_connected_agents") == 1,
             DEADLINE, "the live server to count the agent", interval_s=0.5)
    site.queue("2.0.0")
    wait_for(lambda: value(scrape(f"{web}/metrics"), "tiangong_results_imported_total",
                           status="succeeded") == 2,
             DEADLINE, "both results to be imported", interval_s=0.5)
    after = scrape(f"{web}/metrics")
    assert value(after, "tiangong_bundles_exported_total") == 2
    assert value(after, "tiangong_deployments", environment="plant-a", state="succeeded") == 2
    assert value(after, "tiangong_agents", environment="plant-a", presence="online") == 1
    # The live child's own figures stay on its port (not in the workers' files).
    assert not [name for name, _ in after if name.startswith("tiangong_live_")]
    # Both workers' request counters add up in one scrape (multiprocess mode): at least the
    # scrapes and readiness checks above.
    assert value(after, "tiangong_web_requests_total", status="2xx") >= 5

    delivered = scrape(f"{live}/metrics")
    assert value(delivered, "tiangong_live_bundles_exported_total") == 1
    assert value(delivered, "tiangong_live_bundles_delivered_total", how="received") == 1
    assert value(delivered, "tiangong_live_push_latency_seconds_count") == 1
    assert value(delivered, "tiangong_live_results_total", status="imported") == 2
    (pushed,) = (site.data / "live-outbox" / "site-01" / "sent").glob("*.tgb")
    assert value(delivered, "tiangong_live_transfer_bytes_total",
                 direction="out") == pushed.stat().st_size
    assert value(delivered, "tiangong_live_transfer_bytes_total", direction="in") > 0

    # The agent's own figures, in node-exporter's textfile format.
    textfile = site.home / "agent.prom"

    def agent_figures() -> Samples:
        text = textfile.read_text() if textfile.exists() else ""
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    wait_for(lambda: value(agent_figures(), "tiangong_agent_bundles", state="succeeded") == 2
             and value(agent_figures(), "tiangong_agent_live_connected") == 1, DEADLINE,
             "the agent's textfile to show both bundles run and the live channel up",
             interval_s=0.5)
    assert value(agent_figures(), "tiangong_agent_sequence") == 2

    # Health: the database and the live server separately, on both ports.
    assert get(f"{web}/healthz")[0] == 200
    assert json.loads(get(f"{web}/healthz")[2]) == {"status": "ok", "database": "ok",
                                                     "live": "ok"}
    assert json.loads(get(f"{live}/healthz")[2]) == {"status": "ok", "database": "ok",
                                                      "live": "ok"}
    assert get(f"{live}/readyz")[:1] == (200,)
    assert json.loads(get(f"{web}/readyz")[2]) == {"status": "ready", "database": "ok"}

    # A stopped `hub serve` removes its workers' metrics files.
    hub.terminate()
    assert hub.wait(DEADLINE) == 0
    assert list((site.data / "run").glob("metrics-web-*")) == []
