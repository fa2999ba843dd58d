"""The agent's loop in-process: verify → accept → run → signed result, and every refusal."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.inbox import ReadyItem
from bundle.manifest import Target
from bundle.release import load_release
from bundle.writer import release_manifest, write_bundle
from tests.agent.conftest import drop, verified_result
from tests.fixtures.trust import NOW, TrustKit, make_trust

HELLO = Path(__file__).resolve().parents[2] / "examples" / "releases" / "hello-1.0.0"


def _make_bundle(kit: TrustKit, out: Path, *, seq: int, agent: str = "site-01",
                 environment: str | None = "plant-a", expires_in: int = 86400) -> Path:
    src = load_release(HELLO)
    manifest, files = release_manifest(
        src, bundle_id=str(uuid.uuid4()), issuer=kit.release_key.key_id,
        target=Target(agents=(agent,), environment=environment), root_version=1,
        sequence=seq, created=NOW - 60, expires=NOW + expires_in, counter=1, author="alice",
    )
    return write_bundle(out, manifest, files, [kit.release_key]).paths[0]


def _item(path: Path) -> ReadyItem:
    return ReadyItem(name=path.name, paths=(path,), size=path.stat().st_size, kind="single",
                     first_seen=0.0)


def test_bundle_runs_and_result_verifies(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent, kit, _ = site
    bundle = _make_bundle(kit, tmp_path / "hello.tgb", seq=1)
    out = agent.process(drop(agent, bundle))
    assert out.status == "succeeded", out.summary
    assert not list(agent.config.inbox.iterdir())  # moved, not deleted
    assert (agent.config.archive / "hello.tgb").exists()
    result = verified_result(agent, kit, out.result, tmp_path)  # type: ignore[arg-type]
    assert result["status"] == "succeeded" and result["result_seq"] == 1
    steps = result["body"]["steps"]  # type: ignore[index]
    assert [s["status"] for s in steps] == ["succeeded"] * 3
    assert agent.journal.trust(kit.hub_id).sequence == 1  # type: ignore[union-attr]


def test_duplicate_runs_once(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent, kit, _ = site
    bundle = _make_bundle(kit, tmp_path / "hello.tgb", seq=1)
    assert agent.process(drop(agent, bundle)).status == "succeeded"
    again = agent.process(drop(agent, bundle))
    assert again.status == "duplicate"
    assert len(agent.journal.steps(again.bundle_id or "")) == 3  # not run a second time
    result = verified_result(agent, kit, again.result, tmp_path)  # type: ignore[arg-type]
    assert result["status"] == "duplicate" and result["result_seq"] == 2


@pytest.mark.parametrize(
    ("make", "check"),
    [
        (lambda kit, p: _make_bundle(kit, p, seq=1, agent="other-site"), "target"),
        (lambda kit, p: _make_bundle(kit, p, seq=1, environment="plant-b"), "target"),
        (lambda kit, p: _make_bundle(kit, p, seq=1, expires_in=-30), "expiry"),
        (lambda kit, p: _make_bundle(make_trust(), p, seq=1), "signature"),
    ],
)
def test_bad_bundles_are_quarantined_and_reported(site, tmp_path: Path, make,  # type: ignore[no-untyped-def]
                                                  check: str) -> None:
    agent, kit, _ = site
    bundle = make(kit, tmp_path / "bad.tgb")
    out = agent.process(drop(agent, bundle))
    assert out.status == "rejected"
    assert (agent.config.quarantine / "bad.tgb").exists()
    reason = (agent.config.quarantine / "bad.tgb.reason.txt").read_text()
    assert check in reason
    assert agent.journal.trust(kit.hub_id).sequence == 0  # type: ignore[union-attr]
    assert agent.journal.bundles() == []
    assert not list(agent.config.staging.iterdir())
    result = verified_result(agent, kit, out.result, tmp_path)  # type: ignore[arg-type]
    assert result["status"] == "rejected"
    assert result["body"]["check"] == check  # type: ignore[index]


def test_tampered_bundle_quarantined(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent, kit, _ = site
    bundle = _make_bundle(kit, tmp_path / "t.tgb", seq=1)
    data = bytearray(bundle.read_bytes())
    data[-2000] ^= 0x01
    bundle.write_bytes(bytes(data))
    out = agent.process(drop(agent, bundle))
    assert out.status == "rejected"
    assert agent.journal.steps("x") == []
    assert not list(agent.config.runs.glob("*"))


def test_replay_of_older_sequence_refused(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent, kit, _ = site
    old = _make_bundle(kit, tmp_path / "old.tgb", seq=1)
    new = _make_bundle(kit, tmp_path / "new.tgb", seq=2)
    assert agent.process(drop(agent, new)).status == "succeeded"
    out = agent.process(drop(agent, old))
    assert out.status == "rejected"
    assert "not newer" in out.summary
    assert agent.journal.trust(kit.hub_id).sequence == 2  # type: ignore[union-attr]


def test_damaged_copy_of_accepted_bundle_is_quarantined_not_duplicate(  # type: ignore[no-untyped-def]
    site, tmp_path: Path
) -> None:
    agent, kit, _ = site
    bundle = _make_bundle(kit, tmp_path / "hello.tgb", seq=1)
    assert agent.process(drop(agent, bundle)).status == "succeeded"
    damaged = tmp_path / "copy.tgb"
    data = bytearray(bundle.read_bytes())
    data[-1500] ^= 0x01  # inside a compressed payload: the envelope is unchanged
    damaged.write_bytes(bytes(data))
    out = agent.process(drop(agent, damaged))
    assert out.status == "rejected"
    assert "damaged copy" in out.summary
    assert (agent.config.quarantine / "copy.tgb").exists()
    assert not list(agent.config.staging.glob("dupcheck-*"))


def test_not_before_waits_in_staging_then_runs(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent, kit, clock = site
    src = load_release(HELLO)
    manifest, files = release_manifest(
        src, bundle_id="later", issuer=kit.release_key.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=1,
        sequence=1, created=NOW - 60, expires=NOW + 86400, counter=1, author="alice",
        not_before=NOW + 3600,
    )
    bundle = write_bundle(tmp_path / "later.tgb", manifest, files, [kit.release_key]).paths[0]
    out = agent.process(drop(agent, bundle))
    assert out.status == "waiting"
    # Accepted (sequence persisted) but nothing ran; status says it waits.
    assert agent.journal.trust(kit.hub_id).sequence == 1  # type: ignore[union-attr]
    st = agent.status()
    assert st["bundles"][0]["state"] == "waiting" and st["bundles"][0]["not_before"] == NOW + 3600
    assert all(s["state"] == "pending" for s in st["bundles"][0]["steps"])
    assert agent.run_once() == []
    clock.t = NOW + 3601
    (ran,) = agent.run_once()
    assert ran.status == "succeeded" and ran.bundle_id == "later"


def _secret_release(tmp_path: Path) -> Path:
    d = tmp_path / "sec-1.0.0"
    d.mkdir()
    (d / "use.sh").write_text('echo "token is $TIANGONG_SECRET_API_TOKEN"\n'
                              'test -n "$TIANGONG_SECRET_API_TOKEN"\n')
    (d / "release.toml").write_text(
        'format = 1\n[release]\nproduct = "sec"\nversion = "1.0.0"\n\n[[steps]]\n'
        'name = "use secret"\nkind = "shell"\nscript = "use.sh"\nsecrets = ["api_token"]\n')
    return d


@pytest.mark.parametrize("sealed_for", ["site-01", "other-agent"])
def test_sealed_secret_used_and_never_logged(site, tmp_path: Path,  # type: ignore[no-untyped-def]
                                             sealed_for: str) -> None:
    from bundle.manifest import SecretEntry
    from signing.keys import BoxKeyPair
    from signing.sealed import seal_secret

    agent, kit, _ = site
    value = "s3cr3t-value-for-the-site"
    recipient = agent.keys.box.public if sealed_for == "site-01" else BoxKeyPair.generate().public
    sealed = seal_secret(value, bundle_id="sec-b1", agent_id="site-01", name="api_token",
                         recipient=recipient)
    src = load_release(_secret_release(tmp_path))
    manifest, files = release_manifest(
        src, bundle_id="sec-b1", issuer=kit.release_key.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=1, sequence=1,
        created=NOW - 60, expires=NOW + 86400, counter=1, author="alice",
        secrets=(SecretEntry("api_token", "site-01", sealed),))
    bundle = write_bundle(tmp_path / "sec.tgb", manifest, files, [kit.release_key]).paths[0]
    assert value.encode() not in bundle.read_bytes()  # sealed on the stick
    out = agent.process(drop(agent, bundle))
    result_bytes = out.result.read_bytes()  # type: ignore[union-attr]
    logs = b"".join(p.read_bytes() for p in agent.config.logs.rglob("*.log"))
    if sealed_for == "site-01":
        assert out.status == "succeeded", out.summary
        assert b"[REDACTED]" in logs
    else:
        # Sealed to another agent: it cannot be opened here, so the step has no secret.
        assert out.status == "failed"
        assert "api_token" in out.summary
    assert value.encode() not in logs
    assert value.encode() not in result_bytes
    import zstandard

    # Also not inside the compressed logs of the result.
    for chunk in result_bytes.split(b"(\xb5/\xfd")[1:]:
        try:
            text = zstandard.ZstdDecompressor().decompress(b"(\xb5/\xfd" + chunk,
                                                           max_output_size=1 << 20)
        except zstandard.ZstdError:
            continue
        assert value.encode() not in text


def test_retry_after_failure_is_deliberate_and_recorded(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent, kit, _ = site
    d = tmp_path / "flaky-1.0.0"
    d.mkdir()
    flag = tmp_path / "fixed"
    (d / "a.sh").write_text("echo step one\n")
    (d / "b.sh").write_text(f'test -e "{flag}"\n')
    (d / "release.toml").write_text(
        'format = 1\n[release]\nproduct = "flaky"\nversion = "1.0.0"\n\n'
        '[[steps]]\nname = "one"\nkind = "shell"\nscript = "a.sh"\n\n'
        '[[steps]]\nname = "two"\nkind = "shell"\nscript = "b.sh"\n')
    src = load_release(d)
    manifest, files = release_manifest(
        src, bundle_id="flaky-b1", issuer=kit.release_key.key_id,
        target=Target(agents=("site-01",), environment="plant-a"), root_version=1, sequence=1,
        created=NOW - 60, expires=NOW + 86400, counter=1, author="alice")
    bundle = write_bundle(tmp_path / "flaky.tgb", manifest, files, [kit.release_key]).paths[0]
    assert agent.process(drop(agent, bundle)).status == "failed"
    flag.touch()  # the operator fixes the cause
    with pytest.raises(ValueError, match="steps 1 to 2"):
        agent.retry("flaky-b1", 3)
    again = agent.retry("flaky-b1", 2)
    assert again.status == "succeeded"
    attempts = [(s.idx, s.attempt, s.state) for s in agent.journal.steps("flaky-b1")]
    assert attempts == [(0, 1, "succeeded"), (1, 1, "failed"), (1, 2, "succeeded")]
    result = verified_result(agent, kit, again.result, tmp_path)  # type: ignore[arg-type]
    steps = result["body"]["steps"]  # type: ignore[index]
    assert [(s["index"], s["attempt"], s["status"]) for s in steps] == [
        (1, 1, "succeeded"), (2, 2, "succeeded")]
