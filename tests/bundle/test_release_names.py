"""Release file name rules (docs/release-format.md §4)."""

from __future__ import annotations

import pytest

from bundle.release_names import NameSet, file_name_problem, fold_name, is_hidden


@pytest.mark.parametrize(
    "name",
    [
        "release-notes.md",
        "sql/001_schema.sql",
        "k8s/base/deployment.yaml",
        "with space.txt",
        "caf\u00e9/\u6570\u636e.sql",
        "a" * 255,
        "d/" * 126 + "xyz",  # 255 bytes
        ".hidden",  # valid name; hidden files are excluded elsewhere
        "...",
        "C:x",
    ],
)
def test_valid_names(name: str) -> None:
    assert file_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "is empty"),
        ("/etc/passwd", "is absolute"),
        ("../x", "contains '..'"),
        ("a/../b", "contains '..'"),
        ("a/..", "contains '..'"),
        ("./a", "'.' path component"),
        ("a//b", "empty path component"),
        ("a/", "empty path component"),
        ("a\\b", "backslash"),
        ("a\x00b", "U+0000"),
        ("a\nb", "U+000A at position 2"),
        ("a\x7fb", "U+007F"),
        ("a\u200bb", "U+200B"),  # zero-width space: invisible
        ("a\u202eb", "U+202E"),  # right-to-left override: misleading
        ("a\u00a0b", "U+00A0"),  # no-break space
        ("bad\udcff", "not valid UTF-8 (byte 0xFF"),
        ("\ud800", "non-printable"),
        ("a" * 256, "256 bytes long in UTF-8; the limit is 255"),
        ("\u00e9" * 128, "256 bytes long"),
        (None, "must be a string"),
    ],
)
def test_invalid_names(name: object, reason: str) -> None:
    problem = file_name_problem(name)
    assert problem is not None
    assert reason in problem


def test_hidden_and_fold() -> None:
    assert is_hidden(".env") and is_hidden("a/.git/config") and not is_hidden("a.b/c")
    assert fold_name("Stra\u00dfe.SQL") == fold_name("STRASSE.sql")
    assert fold_name("cafe\u0301") == fold_name("CAF\u00c9")


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (["a.sql", "A.sql"], "collides with 'a.sql'"),
        (["sql/a.sql", "SQL/b.sql"], "(through its directory 'SQL') collides with 'sql'"),
        (["x", "x"], "appears twice"),
        (["x", "x/y"], "needs 'x' as both a file and a directory"),
        (["x/y", "x"], "needs 'x' as both a file and a directory"),
        (["X/y", "x"], "collides with 'X'"),
        (["stra\u00dfe", "STRASSE"], "collides with"),
        (["caf\u00e9", "cafe\u0301"], "Unicode normalisation"),
    ],
)
def test_name_set_collisions(names: list[str], reason: str) -> None:
    seen = NameSet()
    for name in names[:-1]:
        assert seen.add(name) is None
    problem = seen.add(names[-1])
    assert problem is not None and reason in problem


def test_name_set_accepts_shared_directories() -> None:
    seen = NameSet()
    for name in ["a/b/c", "a/b/d", "a/e", "f"]:
        assert seen.add(name) is None
    assert seen.add("a", is_dir=True) is None
    assert seen.add("a/b", is_dir=True) is None
