"""signing.cli_root (``tiangong keys root init/rotate/show``) through click's CliRunner, with an
injected clock. Each refusal also asserts that no output file was written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from signing.cli import EXIT_EXPIRED
from signing.roots import TrustedRoot
from tests.signing.clitools import KeyDir, check, init_args, run
from tests.signing.helpers import DAY, NOW

# --- root init ------------------------------------------------------------------------------------


def test_root_init(kd: KeyDir, root_v1: Path) -> None:
    trusted = TrustedRoot.pin(root_v1.read_bytes(), NOW)
    doc = trusted.document
    assert (doc.version, doc.hub_id, doc.issued, doc.expires) == (1, "hub-1", NOW, NOW + 365 * DAY)
    assert doc.roles["root"] == ((kd.ids["root1"],), 1)
    assert doc.keys[kd.ids["release1"]].expires == NOW + 90 * DAY
    assert doc.keys[kd.ids["root1"]].expires is None


def test_root_init_threshold_two_with_public_listing(kd: KeyDir) -> None:
    out = kd.path / "root.json"
    args = ["root", "init", "--hub-id", "h", "--root-key", kd.key("root1"), "--root-key",
            kd.key("root2"), "--root-key", kd.pub("root3"), "--threshold", "2",
            "--release-key", kd.pub("release1"), "--release-key", kd.pub("release2"),
            "--release-threshold", "2", "--audit-key", kd.pub("audit1"), "-o", str(out)]
    check(run(args), 0)
    doc = TrustedRoot.pin(out.read_bytes(), NOW).document
    assert set(doc.roles["root"][0]) == {kd.ids[n] for n in ("root1", "root2", "root3")}
    assert doc.roles["release"][1] == 2


@pytest.mark.parametrize(
    ("change", "code", "fragment"),
    [
        (lambda a, kd: a.__setitem__(a.index("--threshold") + 1, "2"), 2, "between 1 and"),
        (lambda a, kd: a.__setitem__(a.index("--release-key") + 1, kd.pub("audit1")), 1,
         "holds a audit key"),
        (lambda a, kd: a.__setitem__(a.index("--release-key") + 1, kd.key("release1")), 1,
         "give its .pub"),
        (lambda a, kd: a.__setitem__(a.index("--root-key") + 1, kd.pub("root1")), 1,
         "private root key"),
        (lambda a, kd: a.__setitem__(a.index("--root-key") + 1, kd.key("release1")), 1,
         "a root key is needed"),
        (lambda a, kd: a.extend(["--release-key", kd.pub("release1")]), 1, "same key"),
        (lambda a, kd: a.__setitem__(a.index("--expires") + 1, "1y"), 2, "not a duration"),
        (lambda a, kd: a.__setitem__(a.index("--root-key") + 1, str(kd.path / "nope.key")), 1,
         "nope.key does not exist"),
    ],
    ids=["threshold-above-keys", "audit-as-release", "private-release", "no-private-root",
         "release-as-root", "same-key-twice", "bad-duration", "missing-file"],
)
def test_root_init_refusals(kd: KeyDir, change: Any, code: int, fragment: str) -> None:
    args = init_args(kd)
    change(args, kd)
    result = check(run(args), code)
    assert fragment in result.output
    assert not (kd.path / "root.json").exists()


def test_root_init_wrong_passphrase(kd: KeyDir) -> None:
    result = check(run(init_args(kd), passphrase="wrong"), 1)
    assert "wrong passphrase" in result.output and kd.key("root1") in result.output
    assert not (kd.path / "root.json").exists()


def test_root_init_refuses_to_overwrite(kd: KeyDir, root_v1: Path) -> None:
    before = root_v1.read_bytes()
    result = check(run(init_args(kd)), 1)
    assert "already exist" in result.output
    assert root_v1.read_bytes() == before


# --- root rotate ----------------------------------------------------------------------------------


def rotate_args(kd: KeyDir, *extra: str, out: str = "root-v2.json") -> list[str]:
    return ["root", "rotate", "--current", str(kd.path / "root.json"),
            "--signing-key", kd.key("root1"), "-o", str(kd.path / out), *extra]


def test_root_rotate_to_new_root_key(kd: KeyDir, root_v1: Path) -> None:
    check(run(rotate_args(kd, "--new-root-key", kd.key("root2"),
                          "--release-key", kd.pub("release2"), "--key-expires", "30d"),
              now=NOW + DAY), 0)
    v1 = TrustedRoot.pin(root_v1.read_bytes(), NOW)
    v2 = v1.update((kd.path / "root-v2.json").read_bytes())
    doc = v2.document
    assert doc.version == 2 and doc.issued == NOW + DAY
    assert doc.roles["root"][0] == (kd.ids["root2"],)
    assert doc.roles["release"][0] == (kd.ids["release2"],)
    assert doc.keys[kd.ids["release2"]].expires == NOW + 31 * DAY
    assert doc.roles["audit"][0] == (kd.ids["audit1"],)  # kept, with its expiry
    assert doc.keys[kd.ids["audit1"]].expires == NOW + 90 * DAY


def test_root_rotate_keeping_keys_renews_expiry(kd: KeyDir, root_v1: Path) -> None:
    check(run(rotate_args(kd, "--expires", "30d")), 0)
    v2 = TrustedRoot.pin(root_v1.read_bytes()).update((kd.path / "root-v2.json").read_bytes())
    assert v2.document.expires == NOW + 30 * DAY
    assert v2.document.roles["root"][0] == (kd.ids["root1"],)


def test_root_rotate_revokes_by_prefix(kd: KeyDir, root_v1: Path) -> None:
    check(run(rotate_args(kd, "--release-key", kd.pub("release2"),
                          "--revoke", kd.ids["release1"][:12])), 0)
    v2 = TrustedRoot.pin(root_v1.read_bytes()).update((kd.path / "root-v2.json").read_bytes())
    assert v2.document.revoked == {kd.ids["release1"]}
    assert kd.ids["release1"] not in v2.role_keys("release", NOW).keys
    # Once revoked, a key cannot be listed again.
    result = check(run(["root", "rotate", "--current", str(kd.path / "root-v2.json"),
                        "--signing-key", kd.key("root1"), "--release-key", kd.pub("release1"),
                        "-o", str(kd.path / "root-v3.json")]), 1)
    assert "is revoked" in result.output


@pytest.mark.parametrize(
    ("extra", "code", "fragment"),
    [
        (["--revoke", "abc"], 2, "prefix of at least 8"),
        (["--revoke", "0123456789"], 2, "0 match"),
        (["--revoke", "RELEASE1"], 1, "no release keys would be left"),
        (["--new-root-key", "PUB:root2"], 1, "a verifier would reject it"),
        (["--threshold", "2"], 2, "root threshold must be between 1 and the number"),
        (["--audit-key", "PUB:release2"], 1, "holds a release key"),
        (["--release-key", "PUB:root2"], 1, "holds a root key"),
    ],
    ids=["short-prefix", "unknown-prefix", "revoke-last-release-key", "new-root-not-signing",
         "threshold-too-high", "release-as-audit", "root-as-release"],
)
def test_root_rotate_refusals(
    kd: KeyDir, root_v1: Path, extra: list[str], code: int, fragment: str
) -> None:
    args = []
    for item in extra:
        if item.startswith("PUB:"):
            item = kd.pub(item[4:])
        elif item == "RELEASE1":
            item = kd.ids["release1"]
        args.append(item)
    result = check(run(rotate_args(kd, *args)), code)
    assert fragment in " ".join(result.output.split())
    assert not (kd.path / "root-v2.json").exists()


def test_root_rotate_signing_key_must_belong_to_current_root(kd: KeyDir, root_v1: Path) -> None:
    args = rotate_args(kd)
    args[args.index("--signing-key") + 1] = kd.key("root2")
    result = check(run(args), 1)
    assert "is not a root key of" in result.output and "version 1" in result.output
    assert not (kd.path / "root-v2.json").exists()


def test_root_rotate_of_an_expired_root(kd: KeyDir, root_v1: Path) -> None:
    later = NOW + 400 * DAY
    result = check(run(rotate_args(kd), now=later), 0)
    assert "expired" in result.stderr
    v1 = TrustedRoot.pin(root_v1.read_bytes())
    v1.update_chain([(kd.path / "root-v2.json").read_bytes()], later)


def test_root_rotate_refuses_a_tampered_current_root(kd: KeyDir, root_v1: Path) -> None:
    data = bytearray(root_v1.read_bytes())
    data[len(data) // 2] ^= 0x01
    root_v1.write_bytes(bytes(data))
    result = check(run(rotate_args(kd)), 1)
    assert "not a valid root document" in result.output and str(root_v1) in result.output


# --- root show ------------------------------------------------------------------------------------


def test_root_show(kd: KeyDir, root_v1: Path) -> None:
    text = check(run(["root", "show", str(root_v1)]), 0).output
    assert "signature OK" in text and "version: 1" in text and "hub-1" in text
    assert kd.ids["release1"] in text and "(signed)" in text
    doc = json.loads(check(run(["root", "show", str(root_v1), "--json"]), 0).output)
    assert doc["version"] == 1 and doc["expired"] is False
    assert doc["roles"]["root"]["keys"][0]["signed_this_root"] is True
    assert doc["roles"]["release"]["keys"][0]["expires"] == NOW + 90 * DAY


def test_root_show_expired(root_v1: Path) -> None:
    result = check(run(["root", "show", str(root_v1)], now=NOW + 366 * DAY), EXIT_EXPIRED)
    assert "EXPIRED" in result.output
    assert "keys root rotate" in result.stderr


def test_root_show_flags_expired_keys(root_v1: Path, kd: KeyDir) -> None:
    text = check(run(["root", "show", str(root_v1)], now=NOW + 91 * DAY), 0).output
    assert f"{kd.ids['release1']}  (EXPIRED" in text


@pytest.mark.parametrize("mangle", ["flip", "truncate", "key-file"])
def test_root_show_refuses_bad_documents(kd: KeyDir, root_v1: Path, mangle: str) -> None:
    path = root_v1
    if mangle == "flip":
        data = bytearray(root_v1.read_bytes())
        data[40] ^= 0x01
        root_v1.write_bytes(bytes(data))
    elif mangle == "truncate":
        root_v1.write_bytes(root_v1.read_bytes()[:-10])
    else:
        path = Path(kd.pub("root1"))
    result = check(run(["root", "show", str(path)]), 1)
    assert str(path) in result.output and "not a valid root document" in result.output


def test_root_init_and_rotate_print_json(kd: KeyDir) -> None:
    first = json.loads(check(run([*init_args(kd), "--json"]), 0).stdout)
    assert first["version"] == 1 and first["hub_id"] == "hub-1" and first["signed_by"] == 1
    assert first["roles"]["root"] == {"threshold": 1, "keys": [kd.ids["root1"]]}
    assert first["file"] == str(kd.path / "root.json")
    second = json.loads(check(run([*rotate_args(kd, "--new-root-key", kd.key("root2")),
                                   "--json"]), 0).stdout)
    assert second["version"] == 2 and second["signed_by"] == 2
    assert second["roles"]["root"]["keys"] == [kd.ids["root2"]]
    assert second["file"] == str(kd.path / "root-v2.json")
