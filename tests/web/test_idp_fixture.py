"""The IdP fixture fails loudly (never skips) when SimpleSAMLphp or php is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import saml_idp


def test_missing_simplesamlphp_says_run_make_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saml_idp, "SIMPLESAMLPHP_DIR", tmp_path / "nowhere")
    with pytest.raises(saml_idp.SamlIdPMissingError, match="run `make test`"):
        saml_idp._check_installed()


def test_missing_php_says_run_make_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(saml_idp.shutil, "which", lambda name: None)
    with pytest.raises(saml_idp.SamlIdPMissingError, match="php is missing: run `make test`"):
        saml_idp._check_installed()


def test_idp_metadata_file_holds_the_signing_certificate(saml_idp: saml_idp.SamlIdP) -> None:
    assert saml_idp.metadata_file.read_bytes() == saml_idp.metadata_xml
    assert b"X509Certificate" in saml_idp.metadata_xml
    assert saml_idp.entity_id.encode() in saml_idp.metadata_xml
