"""The hub as a SAML 2.0 service provider: python3-saml settings and request data.

:func:`build_settings` imports the IdP from its metadata *file* (air gap: nothing is
fetched) with ``OneLogin_Saml2_IdPMetadataParser.parse`` and fixes the security policy:

* ``strict`` — Destination, Audience, Recipient, time conditions and ``InResponseTo``
  (against the request ID the SP remembers; unsolicited responses are refused);
* ``wantAssertionsSigned`` always; ``wantMessagesSigned`` (the ``<Response>`` and the
  logout messages) per ``saml.want_messages_signed``, default on — SimpleSAMLphp signs
  both by default and signs logout messages with ``sign.logout``;
* rsa-sha256 / sha256 for what the SP signs, deprecated algorithms (SHA-1) refused;
* ``wantAttributeStatement`` and a NameID required; encrypted assertions not required.

:func:`request_data` builds python3-saml's request dict from the *configured* base URL
(never from the ``Host`` header), so the Destination check cannot be steered by a client.

This module does no HTTP and keeps no state: replay protection is :mod:`web.replay`, the
login flow is :mod:`web.auth`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Request
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from hub.errors import ConfigError
from web.config import SamlConfig

__all__ = ["MAX_IDP_METADATA_BYTES", "build_settings", "request_data"]

MAX_IDP_METADATA_BYTES = 1024 * 1024  # bytes of IdP metadata XML


def _read_pem(path: Any) -> str:
    if path is None:
        return ""
    try:
        return str(path.read_text())
    except OSError as exc:
        raise ConfigError(f"saml: cannot read {path}: {exc}") from exc


def build_settings(cfg: SamlConfig) -> OneLogin_Saml2_Settings:
    """python3-saml settings for ``cfg``, the IdP read from ``cfg.idp_metadata_file``.

    Raises:
        ConfigError: the metadata file is missing, too large, or not usable IdP metadata
            (no signing certificate, no HTTP-Redirect SSO endpoint), or the settings are
            rejected by python3-saml.
    """
    path = cfg.idp_metadata_file
    try:
        with open(path, "rb") as fh:
            xml = fh.read(MAX_IDP_METADATA_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"saml.idp_metadata_file {path}: {exc}") from exc
    if len(xml) > MAX_IDP_METADATA_BYTES:
        raise ConfigError(f"saml.idp_metadata_file {path} is over {MAX_IDP_METADATA_BYTES} bytes")
    try:
        parsed = OneLogin_Saml2_IdPMetadataParser.parse(
            xml,
            required_sso_binding=C.BINDING_HTTP_REDIRECT,
            required_slo_binding=C.BINDING_HTTP_REDIRECT,
        )
    except Exception as exc:  # lxml/defusedxml raise many types on bad XML
        raise ConfigError(f"saml.idp_metadata_file {path}: not IdP metadata: {exc}") from exc
    idp = parsed.get("idp") or {}
    if not idp.get("entityId") or not idp.get("singleSignOnService", {}).get("url"):
        raise ConfigError(
            f"saml.idp_metadata_file {path}: no IdP entity with an HTTP-Redirect "
            "SingleSignOnService"
        )
    if not (idp.get("x509cert") or idp.get("x509certMulti")):
        raise ConfigError(f"saml.idp_metadata_file {path}: the IdP has no signing certificate")
    cert, key = _read_pem(cfg.sp_cert_file), _read_pem(cfg.sp_key_file)
    signs = bool(cert and key)
    settings = {
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": cfg.sp_entity_id,
            "assertionConsumerService": {"url": cfg.acs_url, "binding": C.BINDING_HTTP_POST},
            "singleLogoutService": {"url": cfg.sls_url, "binding": C.BINDING_HTTP_REDIRECT},
            "NameIDFormat": C.NAMEID_UNSPECIFIED,
            "x509cert": cert,
            "privateKey": key,
        },
        "idp": idp,
        "security": {
            "nameIdEncrypted": False,
            "authnRequestsSigned": signs,
            "logoutRequestSigned": signs,
            "logoutResponseSigned": signs,
            "signMetadata": False,
            "wantMessagesSigned": cfg.want_messages_signed,
            "wantAssertionsSigned": True,
            "wantAssertionsEncrypted": False,
            "wantNameId": True,
            "wantNameIdEncrypted": False,
            "wantAttributeStatement": True,
            "requestedAuthnContext": False,
            "allowSingleLabelDomains": False,
            "signatureAlgorithm": C.RSA_SHA256,
            "digestAlgorithm": C.SHA256,
            "rejectDeprecatedAlgorithm": True,
            "allowRepeatAttributeName": False,
        },
    }
    try:
        return OneLogin_Saml2_Settings(settings, sp_validation_only=False)
    except Exception as exc:  # python3-saml raises OneLogin_Saml2_Error and ValueError
        raise ConfigError(f"saml settings rejected: {exc}") from exc


def request_data(cfg: SamlConfig, request: Request) -> dict[str, Any]:
    """python3-saml's view of ``request``, with scheme, host and base path from the
    configured ``sp_base_url``."""
    base = urlsplit(cfg.sp_base_url)
    return {
        "https": "on" if base.scheme == "https" else "off",
        "http_host": base.netloc,
        "script_name": base.path.rstrip("/") + request.path,
        "get_data": request.args.to_dict(flat=True),
        "post_data": request.form.to_dict(flat=True),
        # Verify redirect-binding signatures over the query string exactly as received.
        "query_string": request.query_string.decode("latin-1"),
        "validate_signature_from_qs": True,
    }
