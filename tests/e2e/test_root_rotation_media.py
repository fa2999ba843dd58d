"""Root rotation that reaches an offline site by media (issue 16 §5), with real processes.

The site is enrolled under root version 1 and then hears nothing. Meanwhile two root
ceremonies happen offline (``keys root rotate``) and the hub installs both
(``hub keys install-root``): version 2 certifies a second release key (a build machine's),
version 3 revokes it (the build machine was stolen). The next bundle the hub exports carries
versions 2 and 3 in its ``roots.json``; a real ``agent run`` applies both in order, runs the
release and reports root version 3. A bundle signed afterwards with the revoked key is refused
and quarantined, and nothing at the site changes (no step runs, no sequence is used).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from bundle.manifest import Target
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from signing.keyfile import load_private_key, load_public_key
from tests.e2e.conftest import media_site, run, run_agent_until, wait_for
from tests.e2e.test_hub_approvals import _agent_root_version, _bring_back

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"


def test_two_rotations_reach_an_offline_site_by_media_and_the_revoked_key_is_refused(
        tmp_path: Path) -> None:
    hub, data, home = media_site(tmp_path)
    assert _agent_root_version(home) == 1

    # Ceremony 1 (offline): a build machine's release key joins the hub's.
    build = tmp_path / "build.key"
    made = json.loads(run("keys", "generate", "--role", "release", "-o", str(build),
                          "--insecure-no-passphrase", "--json").stdout)
    build_id = made["keys"][0]["key_id"]
    offline = str(data / "root-key.OFFLINE.json")
    run("keys", "root", "rotate", "--current", str(data / "root.json"), "--signing-key",
        offline, "--release-key", str(data / "keys" / "release.pub"), "--release-key",
        f"{build}.pub", "--key-expires", "90d", "-o", str(tmp_path / "root-v2.json"))
    v2 = json.loads(hub("keys", "install-root", str(tmp_path / "root-v2.json"),
                        "--json").stdout)
    assert v2["version"] == 2
    # A root that revokes the hub's own release key is refused by install-root: sites would
    # refuse every bundle the hub signs. Nothing changes.
    hub_key_id = load_public_key(data / "keys" / "release.pub").key_id
    run("keys", "root", "rotate", "--current", str(data / "root.json"), "--signing-key",
        offline, "--revoke", hub_key_id, "-o", str(tmp_path / "root-v3-bad.json"))
    root_before = (data / "root.json").read_bytes()
    bad = hub("keys", "install-root", str(tmp_path / "root-v3-bad.json"), check=False)
    assert bad.returncode != 0
    assert (f"root-v3-bad.json: root version 3 does not certify this hub's release key "
            f"{hub_key_id[:16]} (keys/release.key)") in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    assert (data / "root.json").read_bytes() == root_before
    assert not (data / "roots" / "root-v3.json").exists()
    # Ceremony 2 (offline): the build machine is stolen; its key is revoked.
    run("keys", "root", "rotate", "--current", str(data / "root.json"), "--signing-key",
        offline, "--revoke", build_id, "-o", str(tmp_path / "root-v3.json"))
    v3 = json.loads(hub("keys", "install-root", str(tmp_path / "root-v3.json"),
                        "--json").stdout)
    assert v3["version"] == 3
    assert _agent_root_version(home) == 1  # the site heard nothing

    # The next bundle, by media, brings versions 2 and 3.
    hub("releases", "create", str(HELLO), "--create-product", user="dev")
    hub("releases", "submit", "hello", "1.0.0", user="dev")
    hub("releases", "approve", "hello", "1.0.0", user="bob")
    hub("deployments", "queue", "hello", "1.0.0", "--environment", "plant-a", user="carol")
    usb = tmp_path / "usb"
    out = hub("export", "--environment", "plant-a", "--out", str(usb), user="carol")
    assert "sequence 1" in out.stdout, out.stdout
    bundle = next(usb.glob("*.tgb"))
    inspected = json.loads(run("bundle", "inspect", str(bundle), "--json").stdout)
    assert inspected["manifest"]["root_version"] == 3
    run_agent_until(home, usb.glob("*.tgb"), "1 result file")
    assert _agent_root_version(home) == 3
    _bring_back(hub, home, tmp_path / "back")
    deps = json.loads(hub("deployments", "list", "--json", user="carol").stdout)
    assert [d["state"] for d in deps] == ["succeeded"]

    # A bundle signed with the revoked key (for root version 3, the next sequence) is refused.
    status = json.loads(run("agent", "status", "--home", str(home), "--json").stdout)
    stolen = load_private_key(build, passphrase=None).signing_key()
    manifest, files = release_manifest(
        load_release(HELLO), bundle_id=str(uuid.uuid4()), issuer=stolen.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=3,
        sequence=2, created=int(inspected["manifest"]["created"]),
        expires=int(inspected["manifest"]["expires"]), counter=2, author="thief")
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    write_bundle(forged_dir / "forged.tgb", manifest, files, [stolen])
    run_agent_until(home, forged_dir.glob("*.tgb"), "the forged bundle's result")
    wait_for(lambda: (home / "quarantine" / "forged.tgb").exists(), 60,
             "the forged bundle in quarantine")
    reasons = [p.read_text() for p in (home / "quarantine").iterdir() if p.name != "forged.tgb"]
    assert len(reasons) == 1 and "check: signature" in reasons[0], reasons
    assert "0 valid signature(s) from trusted keys, 1 required" in reasons[0]
    after = json.loads(run("agent", "status", "--home", str(home), "--json").stdout)
    assert after["root_version"] == 3
    assert [b["bundle_id"] for b in after["bundles"]] == [
        b["bundle_id"] for b in status["bundles"]]  # nothing accepted, nothing ran
    assert after["sequence"] == status["sequence"] == 1
