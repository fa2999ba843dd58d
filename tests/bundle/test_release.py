"""Release directories (docs/release-format.md): load_release, content hash, samples."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from bundle.errors import ReleaseFormatError
from bundle.printable import printable
from bundle.release import (
    MAX_RELEASE_TOML_BYTES,
    ReleaseFile,
    ReleaseSource,
    load_release,
    parse_release_toml,
    unreferenced_files,
)
from bundle.steps import validate_step

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "releases"

BASE: dict[str, Any] = {
    "format": 1,
    "release": {"product": "demo", "version": "1.0.0", "description": "a test release"},
    "steps": [
        {
            "name": "schema",
            "kind": "sql",
            "engine": "postgres",
            "connection": "db",
            "script": "sql/001.sql",
            "timeout": "5m",
        },
        {"name": "deploy", "kind": "k8s", "connection": "cluster", "manifests": ["k8s/app.yaml"]},
        {"name": "smoke", "kind": "shell", "script": "scripts/smoke.sh", "secrets": ["tok"]},
    ],
}
FILES: dict[str, bytes] = {
    "sql/001.sql": b"CREATE TABLE t (id int);\n",
    "k8s/app.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\n",
    "scripts/smoke.sh": b"echo ok\n",
}


def write_release(
    root: Path, doc: dict[str, Any] | str = BASE, files: dict[str, bytes] = FILES
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = doc if isinstance(doc, str) else tomli_w.dumps(doc)
    (root / "release.toml").write_text(text, encoding="utf-8")
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# --- the samples ---


@pytest.mark.parametrize("sample", ["billing-2.4.0", "hello-1.0.0"])
def test_samples_load(sample: str) -> None:
    src = load_release(EXAMPLES / sample)
    product, version = sample.rsplit("-", 1)
    assert (src.product, src.version) == (product, version)
    assert src.steps and src.files
    assert unreferenced_files(src) == []
    for index, step in enumerate(src.steps):
        validate_step(step, index)
    assert src.content_hash == load_release(EXAMPLES / sample).content_hash


def test_billing_sample_uses_every_kind() -> None:
    src = load_release(EXAMPLES / "billing-2.4.0")
    assert [(s["kind"], s.get("engine")) for s in src.steps] == [
        ("sql", "postgres"),
        ("sql", "mysql"),
        ("k8s", None),
        ("shell", None),
    ]
    assert src.steps[3]["secrets"] == ["billing-api-token"]
    assert src.steps[3]["secrets_via"] == "env"
    assert b"$body$" in (src.root / src.steps[0]["script"]).read_bytes()
    assert b"DELIMITER //" in (src.root / src.steps[1]["script"]).read_bytes()


def test_hello_sample_needs_no_site_resources() -> None:
    src = load_release(EXAMPLES / "hello-1.0.0")
    assert {s["kind"] for s in src.steps} == {"shell"}
    assert {s["interpreter"] for s in src.steps} == {"bash", "sh", "python"}
    assert all(not s["secrets"] for s in src.steps)


# --- what a loaded release holds ---


def test_load_release_fields(tmp_path: Path) -> None:
    big = os.urandom(1024) * (2 * 1024 + 500)  # 2.5 MiB: more than one hash buffer
    root = write_release(tmp_path / "rel", files={**FILES, "data/blob.bin": big})
    src = load_release(root)
    assert isinstance(src, ReleaseSource)
    assert (src.product, src.version, src.description) == ("demo", "1.0.0", "a test release")
    assert src.root == root
    assert [f.name for f in src.files] == sorted([*FILES, "data/blob.bin"])
    for f in src.files:
        data = (root / f.name).read_bytes()
        assert f == ReleaseFile(f.name, root / f.name, len(data), hashlib.sha256(data).hexdigest())
    assert src.steps[0] == {
        "name": "schema",
        "kind": "sql",
        "timeout_s": 300,
        "on_failure": "stop",
        "secrets": [],
        "engine": "postgres",
        "connection": "db",
        "script": "sql/001.sql",
    }
    assert unreferenced_files(src) == ["data/blob.bin"]


def test_content_hash_is_the_documented_canonical_json(tmp_path: Path) -> None:
    """Re-derive docs/release-format.md §5 independently of bundle.release."""
    src = load_release(write_release(tmp_path / "rel"))
    doc = {
        "format": 1,
        "product": "demo",
        "version": "1.0.0",
        "description": "a test release",
        "steps": [dict(s) for s in src.steps],
        "files": [
            {"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for n, d in sorted(FILES.items())
        ],
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert src.content_hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_hidden_files_and_dirs_are_not_part_of_the_release(tmp_path: Path) -> None:
    root = write_release(tmp_path / "rel")
    plain = load_release(root).content_hash
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (root / ".env").write_text("PASSWORD=x\n")
    (root / "sql" / ".001.sql.swp").write_bytes(b"\x00swap")
    os.symlink("/etc/passwd", root / ".hidden-link")  # hidden links are ignored too
    src = load_release(root)
    assert [f.name for f in src.files] == sorted(FILES)
    assert src.content_hash == plain


# --- the content hash: fixed by content, changed by any change ---


def _flip_byte(root: Path) -> None:
    path = root / "scripts/smoke.sh"
    data = bytearray(path.read_bytes())
    data[2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_doc(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        doc = copy.deepcopy(BASE)
        change(doc)
        (root / "release.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")

    return edit


def _rename(root: Path) -> None:
    (root / "sql/001.sql").rename(root / "sql/002.sql")
    _edit_doc(lambda d: d["steps"][0].update(script="sql/002.sql"))(root)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_flip_byte, id="one bit of a file"),
        pytest.param(lambda r: (r / "sql/001.sql").write_bytes(FILES["sql/001.sql"] + b" "),
                     id="a byte appended"),
        pytest.param(lambda r: (r / "notes.txt").write_text("x"), id="a file added"),
        pytest.param(_rename, id="a file renamed"),
        pytest.param(_edit_doc(lambda d: d["steps"][0].update(timeout="6m")), id="a timeout"),
        pytest.param(_edit_doc(lambda d: d["steps"][2].update(on_failure="continue")),
                     id="on_failure"),
        pytest.param(_edit_doc(lambda d: d["steps"].reverse()), id="step order"),
        pytest.param(_edit_doc(lambda d: d["release"].update(description="other")),
                     id="description"),
        pytest.param(_edit_doc(lambda d: d["release"].update(version="1.0.1")), id="version"),
    ],
)
def test_content_hash_changes_with_content(tmp_path: Path, change: Callable[[Path], None]) -> None:
    root = write_release(tmp_path / "rel")
    before = load_release(root).content_hash
    change(root)
    assert load_release(root).content_hash != before


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda r: os.utime(r / "sql/001.sql", (1, 1)), id="mtime"),
        pytest.param(lambda r: os.chmod(r / "scripts/smoke.sh", 0o700), id="mode"),
        pytest.param(lambda r: (r / "release.toml").write_text(
            "# a comment\n" + (r / "release.toml").read_text()), id="a comment in release.toml"),
        pytest.param(_edit_doc(lambda d: d["steps"][0].update(timeout=300)),
                     id="5m written as 300"),
        pytest.param(_edit_doc(lambda d: d["steps"][2].update(interpreter="bash")),
                     id="a default written out"),
        pytest.param(lambda r: (r / "empty-dir").mkdir(), id="an empty directory"),
    ],
)
def test_content_hash_ignores_what_is_not_content(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    root = write_release(tmp_path / "rel")
    before = load_release(root).content_hash
    change(root)
    assert load_release(root).content_hash == before


def test_content_hash_does_not_depend_on_the_directory(tmp_path: Path) -> None:
    a = load_release(write_release(tmp_path / "a"))
    b = load_release(write_release(tmp_path / "elsewhere" / "b"))
    assert a.content_hash == b.content_hash
    assert a.root != b.root


# --- release.toml rules: (change to BASE, words the message must hold) ---


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


_DELETE = object()

TOML_BAD: list[Any] = [
    (_set(("format",), _DELETE), ["format is missing", "format = 1"]),
    (_set(("format",), 2), ["format = 2 is not supported", "reads format 1"]),
    (_set(("format",), "1"), ["format = '1' is not supported"]),
    (_set(("formats",), 1), ["top level: 'formats' is not a known field", "did you mean 'format'"]),
    (_set(("step",), [{"name": "x"}]), ["[[step]] is not a known table", "[[steps]]"]),
    (_set(("release",), _DELETE), ["[release] table is missing"]),
    (_set(("release",), "billing"), ["release must be a table"]),
    (_set(("release", "product"), _DELETE), ["[release] product is missing"]),
    (_set(("release", "product"), "Billing"), ["[release] product = 'Billing' is not valid",
                                                "lower-case"]),
    (_set(("release", "product"), "-billing"), ["product = '-billing' is not valid"]),
    (_set(("release", "product"), "billing_api"), ["product = 'billing_api' is not valid"]),
    (_set(("release", "product"), "b" * 64), ["is not valid", "at most 63"]),
    (_set(("release", "product"), 7), ["[release] product must be a string"]),
    (_set(("release", "version"), _DELETE), ["[release] version is missing"]),
    (_set(("release", "version"), "2.4 final"), ["version = '2.4 final' is not valid"]),
    (_set(("release", "version"), "v" * 65), ["is not valid", "at most 64"]),
    (_set(("release", "version"), "../2.4"), ["version = '../2.4' is not valid"]),
    (_set(("release", "descripton"), "x"), ["[release] 'descripton' is not a known field",
                                             "did you mean 'description'"]),
    (_set(("release", "description"), 3), ["[release] description must be a string"]),
    (_set(("release", "description"), "\x1b[2J"), ["description contains", "U+001B"]),
    (_set(("release", "description"), "d" * 4097), ["description is 4097 characters"]),
    (_set(("steps",), _DELETE), ["no steps", "[[steps]]"]),
    (_set(("steps",), []), ["no steps"]),
    (_set(("steps",), {"name": "x"}), ["steps must be an array of tables"]),
    (_set(("steps",), ["sql"]), ["steps must be an array of tables"]),
    (_set(("steps", 1, "name"), "SCHEMA"), ["step 2 ('SCHEMA'), field name", "repeats the name of "
                                            "step 1 ('schema')", "unique"]),
    (_set(("steps", 2, "kind"), "bash"), ["step 3 ('smoke'), field kind", "'bash' is not one of"]),
    (_set(("steps", 0, "timeout"), "5 minutes"), ["step 1 ('schema'), field timeout",
                                                   "is not a duration"]),
    (_set(("steps", 0, "script"), "sql/999.sql"), ["step 1 ('schema'), field script",
                                                    "no release file is named 'sql/999.sql'"]),
    (_set(("steps", 0, "script"), "../outside.sql"), ["field script", "contains '..'"]),
    (_set(("steps", 0, "script"), "release.toml"), ["release.toml itself"]),
    (_set(("steps", 1, "manifests"), ["k8s/app.yml"]), ["did you mean 'k8s/app.yaml'"]),
    (_set(("steps", 2, "shell"), "bash"), ["step 3 ('smoke'): 'shell' is not a known field"]),
]


@pytest.mark.parametrize(("change", "words"), TOML_BAD)
def test_release_toml_rules(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], words: list[str]
) -> None:
    doc = copy.deepcopy(BASE)
    change(doc)
    root = write_release(tmp_path / "rel", doc)
    before = snapshot(root)
    with pytest.raises(ReleaseFormatError) as info:
        load_release(root)
    message = str(info.value)
    assert message.startswith(f"{root / 'release.toml'}: ")
    for word in words:
        assert word in message
    assert snapshot(root) == before  # loading never changes the directory


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('format = 1\n[release\nproduct = "x"\n', ["line 2, column 9", "not valid TOML"]),
        ('format = 1\nformat = 1\n', ["line 2", "not valid TOML"]),
        ('format = 1\n[release]\nproduct = billing\n', ["line 3, column 11", "not valid TOML"]),
        ('format = 1\n[release]\nproduct = "unterminated\n', ["line 3", "not valid TOML"]),
        ('format = 1\n[[steps]]\nname = "a"\n[steps]\n', ["line 4", "not valid TOML"]),
        ('format = 1\n[release]\nversion = "1\x07"\n', ["line 3", "not valid TOML"]),
    ],
)
def test_bad_toml_names_line_and_column(tmp_path: Path, text: str, words: list[str]) -> None:
    root = write_release(tmp_path / "rel", text)
    with pytest.raises(ReleaseFormatError) as info:
        load_release(root)
    assert str(info.value).startswith(f"{root / 'release.toml'}: line ")
    for word in words:
        assert word in str(info.value)


def test_release_toml_encoding_and_size() -> None:
    with pytest.raises(ReleaseFormatError, match=r"x\.toml: is not UTF-8 text \(bad byte at"):
        parse_release_toml(b"format = 1\n# caf\xe9\n", set(), "x.toml")
    with pytest.raises(ReleaseFormatError, match="the limit is"):
        parse_release_toml(b"#" * (MAX_RELEASE_TOML_BYTES + 1), set(), "x.toml")
    # A byte order mark (Windows editors) is accepted.
    text = tomli_w.dumps(BASE).encode("utf-8")
    assert parse_release_toml(b"\xef\xbb\xbf" + text, set(FILES)).product == "demo"


# --- the directory: files, links, names ---


def _symlink_file(root: Path) -> None:
    os.symlink(root / "sql/001.sql", root / "sql/link.sql")


def _symlink_dir(root: Path) -> None:
    os.symlink(root / "sql", root / "more-sql")


def _dangling_symlink(root: Path) -> None:
    os.symlink(root / "nowhere", root / "scripts/gone.sh")


def _fifo(root: Path) -> None:
    os.mkfifo(root / "scripts/pipe")


def _toml_symlink(root: Path) -> None:
    (root / "real.toml").write_bytes((root / "release.toml").read_bytes())
    (root / "release.toml").unlink()
    os.symlink(root / "real.toml", root / "release.toml")


def _write(*names: str) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        for name in names:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")

    return write


DIR_BAD: list[Any] = [
    (_symlink_file, "sql/link.sql", "is a symbolic link"),
    (_symlink_dir, "more-sql", "is a symbolic link"),
    (_dangling_symlink, "scripts/gone.sh", "is a symbolic link"),
    (_fifo, "scripts/pipe", "is a device, fifo or socket"),
    (_toml_symlink, "release.toml", "is a symbolic link"),
    (lambda r: (r / "release.toml").unlink(), "", "no release.toml in this directory"),
    (_write("SQL/001.sql"), "", "collides with"),
    (_write("Scripts/smoke.sh"), "", "collides with"),
    (_write("sql/001.SQL"), "sql/001.", "collides with 'sql/001."),
    (_write("cafe\u0301.txt", "caf\u00e9.txt"), "caf", "Unicode normalisation"),
    (_write("new\nline.txt"), "new\nline.txt", "non-printable character U+000A"),
    (_write("tab\there.txt"), "tab\there.txt", "U+0009"),
    (_write("back\\slash.txt"), "back\\slash.txt", "backslash"),
    (_write("d" * 200 + "/" + "f" * 60), "d" * 200, "limit is 255 bytes"),
]


@pytest.mark.parametrize(("change", "where", "words"), DIR_BAD)
def test_directory_rules(
    tmp_path: Path, change: Callable[[Path], None], where: str, words: str
) -> None:
    root = write_release(tmp_path / "rel")
    change(root)
    with pytest.raises(ReleaseFormatError) as info:
        load_release(root)
    message = str(info.value)
    # The path escaped: one holding a new line does not split the message.
    assert message.startswith(printable(str(root / where).rstrip("/")))
    assert "\n" not in message and words in message


def test_non_utf8_file_name_is_refused(tmp_path: Path) -> None:
    root = write_release(tmp_path / "rel")
    with open(os.path.join(os.fsencode(root), b"bad\xff.sql"), "wb") as fh:
        fh.write(b"x")
    with pytest.raises(ReleaseFormatError, match=r"bad\\udcff\.sql'? is not valid UTF-8") as info:
        load_release(root)
    str(info.value).encode("utf-8")  # the message itself is printable
    assert str(info.value).startswith(f"{root}/bad\\xff.sql: ")  # the path as the agent shows it


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ReleaseFormatError, match="is not a release directory"):
        load_release(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReleaseFormatError, match="is not a release directory"):
        load_release(tmp_path / "file")


def test_referencing_a_hidden_file_is_an_error(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["steps"][2]["script"] = ".scripts/smoke.sh"
    root = write_release(tmp_path / "rel", doc, {**FILES, ".scripts/smoke.sh": b"echo\n"})
    with pytest.raises(ReleaseFormatError, match="hidden files are not part of the release"):
        load_release(root)


def test_nested_release_toml_is_an_ordinary_file(tmp_path: Path) -> None:
    root = write_release(tmp_path / "rel", files={**FILES, "docs/release.toml": b"x"})
    assert "docs/release.toml" in unreferenced_files(load_release(root))
