"""Tampering with the audit log through the database, seen by real ``tiangong hub``
processes: ``audit verify`` names it (exit 3, no traceback), write commands refuse with a
clear message, and ``export`` signs no checkpoint over a forged event."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from sqlalchemy import select, text

from hub.audit_chain import compute_hash_raw
from hub.db import AuditEvent, AuditHead, Deployment
from tests.hub.realhub import ENV, RealHub


def _forge(hub: RealHub, *, move_head: bool) -> int:
    assert hub.engine is not None
    with hub.engine.begin() as conn:
        head, prev = conn.execute(select(AuditHead.seq, AuditHead.hash)).one()
        at = "2026-12-01T00:00:00.000000Z"
        digest = compute_hash_raw(head + 1, at, "mallory", "release.approve", "release", "x",
                                  "{}", prev)
        conn.execute(text(
            "INSERT INTO audit_events (seq, at, actor, action, object_type, object_id, "
            "details, prev_hash, hash) VALUES (:s, '2026-12-01 00:00:00.000000', 'mallory', "
            "'release.approve', 'release', 'x', '{}', :p, :h)"),
            {"s": head + 1, "p": prev, "h": digest})
        if move_head:
            conn.execute(text("UPDATE audit_head SET seq = :s, hash = :h"),
                         {"s": head + 1, "h": digest})
    return int(head + 1)


def test_forged_rows_are_named_and_never_signed(tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    try:
        hub.init()
        key = hub.data / "keys" / "audit-mac.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        hub.seed(2)
        ok = hub.cli("audit", "verify", user="aud")
        assert ok.returncode == 0 and "every event's MAC verified" in ok.stdout, ok.stdout

        # A row past the head: every write used to die with a raw IntegrityError.
        seq = _forge(hub, move_head=False)
        out = hub.cli("audit", "verify", user="aud")
        assert out.returncode == 3, out
        assert f"event {seq} carries no MAC" in out.stdout
        assert f"goes on past its head (event {seq - 1})" in out.stdout
        assert "Traceback" not in out.stderr + out.stdout
        write = hub.cli("export", "--environment", ENV, "--out", str(tmp_path / "usb"))
        assert "Traceback" not in write.stderr and "IntegrityError" not in write.stderr
        assert f"event(s) {seq}..{seq} after its head" in write.stdout + write.stderr

        # The head moved too, as a careful forger would: still named, and export refuses to
        # sign a checkpoint over it (each deployment fails, nothing is exported).
        with hub.engine.begin() as conn:  # type: ignore[union-attr]
            conn.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": seq})
        _forge(hub, move_head=True)
        out = hub.cli("audit", "verify", "--json", user="aud")
        assert out.returncode == 3 and f"event {seq} carries no MAC" in out.stdout
        doc = json.loads(out.stdout)
        assert doc["macs_checked"] is True
        assert {"seq": seq, "kind": "mac"} in doc["problem_kinds"]
        export = hub.cli("export", "--environment", ENV, "--out", str(tmp_path / "usb"))
        assert export.returncode == 1
        assert "refusing to sign an audit checkpoint" in export.stderr
        assert not list((tmp_path / "usb").glob("*.tgb"))
        with hub.ctx() as ctx:
            assert {d.state for d in ctx.session.scalars(select(Deployment))} == {"queued"}
            assert ctx.session.scalars(select(AuditEvent).where(
                AuditEvent.action == "audit.checkpoint")).first() is None
    finally:
        hub.close()


def test_an_older_hub_gets_its_mac_key(tmp_path: Path) -> None:
    hub = RealHub(tmp_path / "hub")
    try:
        hub.init()
        # As initialised before audit MACs: no key file, and no MAC on its events.
        (hub.data / "keys" / "audit-mac.key").unlink()
        hub.close()
        hub.init_engine()
        assert hub.engine is not None
        with hub.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET mac = NULL"))
        hub.seed(1)
        before = hub.cli("audit", "verify", user="aud")
        assert before.returncode == 0 and "MACs NOT checked" in before.stdout, before
        made = hub.cli("audit", "mac-key", user="admin")
        assert made.returncode == 0 and "carry a MAC" in made.stdout, made
        again = hub.cli("audit", "mac-key", user="admin")
        assert again.returncode == 2 and "exists already" in again.stderr
        hub.cli("environments", "create", "plant-b", user="admin")
        after = hub.cli("audit", "verify", user="aud")
        assert after.returncode == 0 and "every event's MAC verified" in after.stdout, after
    finally:
        hub.close()
