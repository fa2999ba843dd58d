"""A root installed while hub processes run reaches them without a restart
(``hub.keystore.KeysReloader``: ``hub serve``'s workers, the live server, the scheduler):
after ``tiangong hub keys install-root`` the keys they use carry the new root at their next
call; a root.json replaced by something unreadable keeps the keys loaded before."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from hub.keystore import KeysReloader
from signing.roots import TrustedRoot
from tests.e2e.conftest import run
from tests.hub.realhub import RealHub


def _version(reloader: KeysReloader) -> int:
    return TrustedRoot.pin(reloader.current().root_envelope).version


def test_a_running_process_takes_the_new_root_at_its_next_call(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hub = RealHub(tmp_path / "hub")
    hub.init()
    reloader = KeysReloader(hub.data)
    first = reloader.current()
    assert _version(reloader) == 1 and reloader.current() is first  # no reload: unchanged
    v2 = tmp_path / "root-v2.json"
    run("keys", "root", "rotate", "--current", str(hub.data / "root.json"), "--signing-key",
        str(hub.data / "root-key.OFFLINE.json"), "-o", str(v2))
    installed = hub.cli("keys", "install-root", str(v2), "--json", user="admin")
    assert installed.returncode == 0, installed.stderr
    with caplog.at_level(logging.WARNING, logger="tiangong.hub"):
        assert _version(reloader) == 2
    assert "root version 2 is current now (was 1)" in caplog.text
    assert reloader.current().root_envelope == v2.read_bytes()
    assert reloader.current().release_key is not None  # the online keys came along

    # Someone writes junk over root.json: the process keeps the root it has, says why.
    junk = hub.data / "root.json.tmp"
    junk.write_bytes(b"{not a root")
    os.replace(junk, hub.data / "root.json")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="tiangong.hub"):
        assert _version(reloader) == 2
    assert "keeping the hub's keys loaded before" in caplog.text
    junk.write_bytes(v2.read_bytes())
    os.replace(junk, hub.data / "root.json")
    assert _version(reloader) == 2
    hub.close()
