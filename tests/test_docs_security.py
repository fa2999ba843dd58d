"""docs/security.md names real tests, and the docs cite it (not a file outside the project)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_test_named_in_security_md_exists() -> None:
    text = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    cited = CITED.findall(text)
    assert len(cited) > 40
    missing = [f"{path}::{name}" for path, name in cited
               if not (REPO / path).is_file()
               or not re.search(rf"^(async )?def {name}\(", (REPO / path).read_text(
                   encoding="utf-8"), re.M)]
    assert missing == []


def test_every_threat_has_a_section() -> None:
    text = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    threats = text.split("## Threats and where they are defended", 1)[1].split("\n## ", 1)[0]
    numbers = [int(n) for n in re.findall(r"^### (\d+)\. ", threats, re.M)]
    assert numbers == list(range(1, 24))


def test_docs_cite_security_md_not_an_outside_file() -> None:
    files = [*(REPO / "docs").glob("*.md"), REPO / "README.md",
             *(p for pkg in ("agent", "bundle", "hub", "signing", "web", "tiangong")
               for p in (REPO / pkg).rglob("*.py"))]
    cites = [p.relative_to(REPO).as_posix() for p in files
             if "SECURITY-MODEL" in p.read_text(encoding="utf-8")]
    assert cites == []
