"""The OpenAPI document and the blueprint agree: every route is documented and every
documented operation is a route; every reference resolves; the document is served without
a token. (Answers are checked against it in every call of test_api.py.)"""

from __future__ import annotations

import re
from typing import Any

from tests.web.pages import Site
from web.api import PREFIX
from web.api.openapi import SCHEMAS


def _doc(site: Site) -> dict[str, Any]:
    resp = site.app.test_client().get(f"{PREFIX}/openapi.json")
    assert resp.status_code == 200
    doc: dict[str, Any] = resp.get_json()
    return doc


def _routes(site: Site) -> set[tuple[str, str]]:
    found = set()
    for rule in site.app.url_map.iter_rules():
        if rule.endpoint.partition(".")[0] != "api":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((method, path))
    return found


def test_every_route_is_documented_and_every_documented_operation_is_a_route(
    site: Site,
) -> None:
    doc = _doc(site)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = _routes(site)
    assert routes == documented
    assert len(routes) == 58


def test_the_document_is_openapi_3_1_and_its_references_resolve(site: Site) -> None:
    doc = _doc(site)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["components"]["schemas"]) == set(SCHEMAS)
    text = str(doc)
    for name in re.findall(r"#/components/schemas/(\w+)", text):
        assert name in SCHEMAS, name
    ids = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            ids.append(op["operationId"])
            assert op["responses"], (method, path)
            for param in re.findall(r"{(\w+)}", path):
                assert any(p["name"] == param and p["in"] == "path" and p["required"]
                           for p in op.get("parameters", [])), (method, path, param)
            if op["security"]:
                assert {"401", "403"} <= set(op["responses"]), (method, path)
                assert op["x-tiangong-scope"] in ("read", "releases:write", "approve",
                                                  "deploy", "admin")
    assert len(ids) == len(set(ids))


def test_unknown_operations_answer_json_too(site: Site) -> None:
    c = site.app.test_client()
    missing = c.get(f"{PREFIX}/nothing-here")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
    wrong = c.delete(f"{PREFIX}/releases")
    assert wrong.status_code == 405 and wrong.get_json()["error"] == "method_not_allowed"
    page = c.get("/no-such-page")  # the web UI's own pages are unchanged
    assert page.status_code == 404 and page.content_type.startswith("text/html")
