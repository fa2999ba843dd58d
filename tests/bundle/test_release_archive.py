"""Release archives (docs/release-format.md §6): load_release_archive / unpack_release_archive.

Every rejection also checks that nothing was left behind: no destination, no temporary tree.
"""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle.errors import BundleError, LimitExceededError, ReleaseFormatError
from bundle.release import load_release, load_release_archive
from bundle.release_archive import ArchiveLimits, unpack_release_archive

RELEASE = {
    "format": 1,
    "release": {"product": "demo", "version": "1.0.0"},
    "steps": [
        {"name": "hello", "kind": "shell", "script": "scripts/hello.sh"},
        {"name": "report", "kind": "shell", "script": "scripts/report.py", "interpreter": "python"},
    ],
}
FILES: dict[str, bytes] = {
    "release.toml": tomli_w.dumps(RELEASE).encode(),
    "scripts/hello.sh": b"echo hello\n",
    "scripts/report.py": b"print('report')\n",
}

Member = tuple[str, bytes | None]  # (name, data); data None: a directory


def tar_bytes(
    files: dict[str, bytes] = FILES,
    *,
    prefix: str = "",
    extra: Callable[[tarfile.TarFile], None] | None = None,
    fmt: int = tarfile.PAX_FORMAT,
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        if prefix:
            info = tarfile.TarInfo(prefix.rstrip("/") or ".")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tf)
    return buf.getvalue()


def zip_bytes(
    files: dict[str, bytes] = FILES,
    *,
    prefix: str = "",
    extra: Callable[[zipfile.ZipFile], None] | None = None,
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if prefix:
            zf.writestr(prefix, b"")
        for name, data in files.items():
            zf.writestr(prefix + name, data)
        if extra is not None:
            extra(zf)
    return buf.getvalue()


def tar_member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> Callable[[tarfile.TarFile], None]:
    def add(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    return add


def zip_member(name: str, mode: int, data: bytes = b"") -> Callable[[zipfile.ZipFile], None]:
    def add(zf: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = mode << 16
        zf.writestr(info, data)

    return add


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    """(directory holding the archive, parent directory of the destination)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "in", tmp_path / "out"


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# --- good archives ---

GOOD: list[Any] = [
    pytest.param("r.tar", lambda: tar_bytes(), id="tar"),
    pytest.param("r.tgz", lambda: gzip.compress(tar_bytes(), mtime=0), id="tgz"),
    pytest.param("r.tar.gz", lambda: gzip.compress(tar_bytes(prefix="demo-1.0.0/")),
                 id="tar.gz with wrapper"),
    pytest.param("r.zip", lambda: zip_bytes(), id="zip"),
    pytest.param("r.zip", lambda: zip_bytes(prefix="demo-1.0.0/"), id="zip with wrapper"),
    pytest.param("r.tar", lambda: tar_bytes(prefix="./"), id="tar of ./"),
    pytest.param("r.tar", lambda: tar_bytes(fmt=tarfile.GNU_FORMAT), id="gnu tar"),
    pytest.param("r.tar", lambda: tar_bytes(fmt=tarfile.USTAR_FORMAT), id="ustar"),
    pytest.param("upload.bin", lambda: zip_bytes(), id="kind from content, not name"),
]


@pytest.mark.parametrize(("name", "make"), GOOD)
def test_good_archives_load(
    places: tuple[Path, Path], tmp_path: Path, name: str, make: Callable[[], bytes]
) -> None:
    src_dir, out = places
    archive = _write(src_dir, name, make())
    dest = out / "rel"
    src = load_release_archive(archive, dest)
    assert src.root == dest
    assert sorted(p.name for p in out.iterdir()) == ["rel"]  # no temporary tree left
    assert [f.name for f in src.files] == ["scripts/hello.sh", "scripts/report.py"]
    assert (dest / "release.toml").is_file()
    # The same release as a directory has the same content hash.
    plain = tmp_path / "plain"
    for rel, data in FILES.items():
        (plain / rel).parent.mkdir(parents=True, exist_ok=True)
        (plain / rel).write_bytes(data)
    assert src.content_hash == load_release(plain).content_hash


def test_long_and_non_ascii_names(places: tuple[Path, Path]) -> None:
    src_dir, out = places
    long_name = "data/" + "d" * 120 + "/" + "caf\u00e9-\u6570\u636e.txt"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        archive = _write(src_dir, f"r{fmt}.tar", tar_bytes({**FILES, long_name: b"x"}, fmt=fmt))
        src = load_release_archive(archive, out / f"rel{fmt}")
        assert long_name in [f.name for f in src.files]


def test_hidden_members_are_not_written(places: tuple[Path, Path]) -> None:
    src_dir, out = places
    files = {**FILES, ".git/config": b"[core]\n", "scripts/.hello.sh.swp": b"x",
             "__MACOSX/scripts/._hello.sh": b"resource fork"}
    archive = _write(src_dir, "r.zip", zip_bytes(files, prefix="demo/"))
    src = load_release_archive(archive, out / "rel")
    assert not (out / "rel" / ".git").exists()
    assert not (out / "rel" / "__MACOSX").exists()
    assert not (out / "rel" / "scripts" / ".hello.sh.swp").exists()
    assert [f.name for f in src.files] == ["scripts/hello.sh", "scripts/report.py"]


def test_dest_may_be_an_empty_directory(places: tuple[Path, Path]) -> None:
    src_dir, out = places
    (out / "rel").mkdir()
    src = load_release_archive(_write(src_dir, "r.tar", tar_bytes()), out / "rel")
    assert src.product == "demo"


def test_dest_must_be_new_or_empty(places: tuple[Path, Path]) -> None:
    src_dir, out = places
    (out / "rel").mkdir()
    (out / "rel" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        load_release_archive(_write(src_dir, "r.tar", tar_bytes()), out / "rel")
    assert (out / "rel" / "keep.txt").read_text() == "mine"


# --- rejections: (archive name, bytes, error type, words) ---


def _tar_with_bad_checksum() -> bytes:
    data = bytearray(tar_bytes())
    data[0] ^= 0x20  # a letter of the first member's name changes case
    return bytes(data)


def _truncated_tar() -> bytes:
    data = tar_bytes({**FILES, "big.bin": b"b" * 3000})
    return data[: data.index(b"b" * 100) + 1000]


def _tar_with_size(size: int) -> Callable[[tarfile.TarFile], None]:
    """A member whose header declares ``size`` bytes (followed by far fewer)."""

    def add(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("huge.bin")
        info.size = 16
        header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
        header[124:136] = b"\x80" + size.to_bytes(11, "big")  # base-256 size
        header[148:156] = b" " * 8
        header[148:155] = f"{sum(header):06o}\x00".encode()
        assert tf.fileobj is not None
        tf.fileobj.write(bytes(header) + b"\x00" * 512)
        tf.offset += len(header) + 512

    return add


def _tar_with_pax_size(text: str) -> Callable[[tarfile.TarFile], None]:
    """A member whose pax header gives its size as ``text``."""

    def add(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("scripts/p.bin")
        info.size = 1
        info.pax_headers = {"size": text}
        tf.addfile(info, io.BytesIO(b"x"))

    return add


SMALL = ArchiveLimits(max_members=20, max_file_bytes=4096, max_total_bytes=8192)

BAD: list[Any] = [
    # paths
    ("r.tar", tar_bytes(extra=tar_member("../evil.sh", data=b"x")), ReleaseFormatError,
     ["member '../evil.sh'", "contains '..'"]),
    ("r.tar", tar_bytes(extra=tar_member("scripts/../../evil", data=b"x")), ReleaseFormatError,
     ["contains '..'"]),
    ("r.tar", tar_bytes(extra=tar_member("/etc/cron.d/evil", data=b"x")), ReleaseFormatError,
     ["member '/etc/cron.d/evil'", "is absolute"]),
    ("r.zip", zip_bytes(extra=zip_member("../evil.sh", 0o100644, b"x")), ReleaseFormatError,
     ["contains '..'"]),
    ("r.zip", zip_bytes(extra=zip_member("/abs.sh", 0o100644, b"x")), ReleaseFormatError,
     ["is absolute"]),
    ("r.zip", zip_bytes(extra=zip_member("C:\\evil.sh", 0o100644, b"x")), ReleaseFormatError,
     ["backslash"]),
    ("r.tar", tar_bytes(extra=tar_member("esc\x1b[2J.sh", data=b"x")), ReleaseFormatError,
     ["non-printable character U+001B"]),
    ("r.zip", zip_bytes(extra=zip_member("bell\x07.sh", 0o100644, b"x")), ReleaseFormatError,
     ["U+0007"]),
    # zipfile cuts names at a NUL when writing, so put the NUL in afterwards
    ("r.zip", zip_bytes(extra=zip_member("nulZ.sh", 0o100644, b"x")).replace(b"nulZ", b"nul\0"),
     ReleaseFormatError, ["U+0000"]),
    # links and special files
    ("r.tar", tar_bytes(extra=tar_member("scripts/x", tarfile.SYMTYPE, link="/etc/passwd")),
     ReleaseFormatError, ["member 'scripts/x'", "is a symbolic link"]),
    ("r.tar", tar_bytes(extra=tar_member("scripts/y", tarfile.LNKTYPE, link="release.toml")),
     ReleaseFormatError, ["is a hard link"]),
    ("r.tar", tar_bytes(extra=tar_member("dev/null", tarfile.CHRTYPE)), ReleaseFormatError,
     ["is a character device"]),
    ("r.tar", tar_bytes(extra=tar_member("dev/sda", tarfile.BLKTYPE)), ReleaseFormatError,
     ["is a block device"]),
    ("r.tar", tar_bytes(extra=tar_member("pipe", tarfile.FIFOTYPE)), ReleaseFormatError,
     ["is a fifo"]),
    ("r.tar", tar_bytes(extra=tar_member(".hidden-link", tarfile.SYMTYPE, link="/")),
     ReleaseFormatError, ["is a symbolic link"]),
    ("r.zip", zip_bytes(extra=zip_member("scripts/x", stat.S_IFLNK | 0o777, b"/etc/passwd")),
     ReleaseFormatError, ["member 'scripts/x'", "is a symbolic link"]),
    ("r.zip", zip_bytes(extra=zip_member("fifo", stat.S_IFIFO | 0o644)), ReleaseFormatError,
     ["special file"]),
    # names that collide
    ("r.tar", tar_bytes({**FILES, "Scripts/hello.sh": b"x"}), ReleaseFormatError,
     ["collides with 'scripts'", "letter case"]),
    ("r.zip", zip_bytes({**FILES, "scripts/HELLO.sh": b"x"}), ReleaseFormatError,
     ["collides with 'scripts/hello.sh'"]),
    ("r.tar", tar_bytes(extra=tar_member("scripts/hello.sh", data=b"again")), ReleaseFormatError,
     ["member 'scripts/hello.sh'", "appears twice"]),
    ("r.tar", tar_bytes(extra=tar_member("scripts/hello.sh/x", data=b"x")), ReleaseFormatError,
     ["as both a file and a directory"]),
    # limits
    ("r.tar", tar_bytes({**FILES, "big.bin": b"b" * 5000}), LimitExceededError,
     ["'big.bin' is 5000 bytes", "max_file_bytes"]),
    ("r.zip", zip_bytes({**FILES, "big.bin": b"b" * 5000}), LimitExceededError,
     ["max_file_bytes"]),
    ("r.tar", tar_bytes({**FILES, "a.bin": b"a" * 4000, "b.bin": b"b" * 4000}),
     LimitExceededError, ["exceed 8192 bytes", "max_total_bytes"]),
    ("r.tar", tar_bytes({**FILES, **{f"f/{i}": b"" for i in range(20)}}), LimitExceededError,
     ["more than 20 members", "max_members"]),
    ("r.zip", zip_bytes({**FILES, **{f"f/{i}": b"" for i in range(20)}}), LimitExceededError,
     ["members", "max_members"]),
    ("r.tgz", gzip.compress(tar_bytes({**FILES, "bomb": bytes(4 * 1024 * 1024)})),
     LimitExceededError, ["max_file_bytes"]),
    ("r.tar", tar_bytes(extra=_tar_with_size(2**62)), LimitExceededError, ["max_file_bytes"]),
    ("r.tar", tar_bytes(extra=tar_member("p" * 70_000, data=b"x")), LimitExceededError,
     ["extended header", "max_tar_extra_bytes"]),
    ("r.tar", tar_bytes(extra=tar_member("n/" * 600 + "x", data=b"x")), ReleaseFormatError,
     ["limit is 1024 bytes"]),
    # a superscript two is a digit to str.isdigit() but not to int(): a raw ValueError
    ("r.tar", tar_bytes(extra=_tar_with_pax_size("\u00b2")), ReleaseFormatError,
     ["member 'scripts/p.bin'", "bad pax size '\u00b2'"]),
    # not an archive, or a broken one
    ("r.tar", b"", ReleaseFormatError, ["not a release archive"]),
    ("r.tar", b"format = 1\n", ReleaseFormatError, ["not a release archive"]),
    ("r.tar", _tar_with_bad_checksum(), ReleaseFormatError, ["checksum mismatch"]),
    ("r.tar", _truncated_tar(), ReleaseFormatError, ["truncated"]),
    ("r.tar", tar_bytes()[:1024], ReleaseFormatError, ["truncated"]),
    ("r.tgz", gzip.compress(tar_bytes())[:200], ReleaseFormatError, ["corrupt gzip data"]),
    ("r.zip", zip_bytes()[:-30], ReleaseFormatError, ["corrupt zip archive"]),
    # a good archive holding a bad release: unpacked, refused, removed
    ("r.tar", tar_bytes({**FILES, "release.toml": b"format = 2\n"}), ReleaseFormatError,
     ["release.toml: format = 2 is not supported"]),
    ("r.zip", zip_bytes({"scripts/hello.sh": b"x"}), ReleaseFormatError,
     ["no release.toml in this directory"]),
]


@pytest.mark.parametrize(("name", "data", "error", "words"), BAD)
def test_bad_archives_are_refused_and_leave_nothing(
    places: tuple[Path, Path], name: str, data: bytes, error: type[Exception], words: list[str]
) -> None:
    src_dir, out = places
    archive = _write(src_dir, name, data)
    with pytest.raises(error) as info:
        load_release_archive(archive, out / "rel", limits=SMALL)
    message = str(info.value)
    for word in words:
        assert word in message
    assert list(out.iterdir()) == []  # no destination, no temporary tree
    assert list(src_dir.iterdir()) == [archive]


def test_archive_size_is_capped_before_reading(places: tuple[Path, Path]) -> None:
    src_dir, out = places
    archive = _write(src_dir, "r.tar", tar_bytes())
    with pytest.raises(LimitExceededError, match="max_archive_bytes"):
        unpack_release_archive(archive, out / "rel", ArchiveLimits(max_archive_bytes=1024))
    assert list(out.iterdir()) == []


# --- arbitrary corruption never raises anything but a BundleError ---

_TAR = tar_bytes({**FILES, "d/x.bin": b"x" * 700, "caf\u00e9": b"pax"}, prefix="w/")
_ZIP = zip_bytes({**FILES, "d/x.bin": b"x" * 700})


def _checksum_ok(block: bytes) -> bool:
    text = block[148:156].split(b"\0", 1)[0].strip()
    return text.isdigit() and int(text, 8) == sum(block[:148]) + 256 + sum(block[156:])


_TAR_HEADERS = [
    pos for pos in range(0, len(_TAR), 512) if _checksum_ok(_TAR[pos : pos + 512])
]


def _fix_tar_checksums(data: bytearray) -> None:
    """Re-checksum the header blocks, so that edits reach the header parser."""
    for pos in _TAR_HEADERS:
        if pos + 512 <= len(data):
            data[pos + 148 : pos + 156] = b" " * 8
            data[pos + 148 : pos + 155] = f"{sum(data[pos : pos + 512]):06o}\0".encode()


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    base=st.sampled_from([_TAR, _ZIP]),
    edits=st.lists(
        st.tuples(
            st.one_of(
                st.integers(min_value=0, max_value=len(_TAR) - 1),
                st.sampled_from(_TAR_HEADERS).flatmap(
                    lambda h: st.integers(min_value=h, max_value=h + 511)
                ),
            ),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    ),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=len(_TAR))),
)
def test_corrupted_archives_raise_only_bundle_errors(
    base: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(base)
    for pos, value in edits:
        data[pos % len(data)] = value
    if base is _TAR:
        _fix_tar_checksums(data)
    if cut is not None:
        data = data[:cut]
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "a"
        archive.write_bytes(bytes(data))
        out = Path(tmp) / "out"
        out.mkdir()
        try:
            load_release_archive(archive, out / "rel", limits=SMALL)
        except BundleError:
            assert list(out.iterdir()) == []


# --- bombs: refused at the declared size, before a byte of the member is written ----------

BOMB_BYTES = 32 * 1024**2  # bytes of zeros a bomb member unpacks to (compresses to ~32 KiB)


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("release.toml", FILES["release.toml"])
        z.writestr("data/zeros.bin", bytes(BOMB_BYTES))
    return buf.getvalue()


def _tar_bomb() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=9) as tar:
        for name, data in (("release.toml", FILES["release.toml"]),
                           ("data/zeros.bin", bytes(BOMB_BYTES))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


@pytest.mark.parametrize("make", [_zip_bomb, _tar_bomb], ids=["zip", "tar.gz"])
def test_bomb_is_refused_before_writing_by_the_ratio_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[], bytes]
) -> None:
    """A ~32 KiB archive declaring 32 MiB: over 100 times its size, refused at the member's
    header; the member is never opened for writing, nothing is left behind."""
    from bundle import release_archive

    data = make()
    assert len(data) * 100 < BOMB_BYTES  # a real bomb by the default ratio
    archive = tmp_path / "bomb.bin"
    archive.write_bytes(data)
    written: list[str] = []
    real = release_archive._Unpacker.write_file

    def spy(self: Any, name: str, size: int, src: Any) -> None:
        written.append(name)
        real(self, name, size, src)

    monkeypatch.setattr(release_archive._Unpacker, "write_file", spy)
    with pytest.raises(LimitExceededError, match=r"member 'data/zeros.bin': at most 100 times "
                       rf"the archive's {len(data)} bytes \(limit max_ratio\)"):
        unpack_release_archive(archive, tmp_path / "out")
    assert "data/zeros.bin" not in written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.bin"]
    # With a ratio that allows it (and room for it), the same archive unpacks.
    unpack_release_archive(archive, tmp_path / "out", ArchiveLimits(max_ratio=2000))
    assert (tmp_path / "out" / "data" / "zeros.bin").stat().st_size == BOMB_BYTES


def test_zip_member_holding_more_than_declared_is_refused(tmp_path: Path) -> None:
    """A zip whose headers declare 1000 bytes for a member that inflates to 1 MiB: at most
    the declared bytes are read and written, then the archive is refused."""
    body = bytes(range(256)) * 4096  # 1 MiB
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("release.toml", FILES["release.toml"])
        z.writestr("scripts/big.bin", body)
    data = bytearray(buf.getvalue())
    real = len(body).to_bytes(4, "little")
    lie = (1000).to_bytes(4, "little")
    # the uncompressed size in the member's local header (offset 22) and central entry (24)
    local = data.index(b"scripts/big.bin") - 30  # the name follows the 30-byte local header
    assert data[local:local + 4] == b"PK\x03\x04" and data[local + 22:local + 26] == real
    data[local + 22:local + 26] = lie
    central = data.rindex(b"PK\x01\x02")
    assert data[central + 24:central + 28] == real
    data[central + 24:central + 28] = lie
    archive = tmp_path / "liar.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(ReleaseFormatError, match=r"corrupt zip archive|more data than"):
        unpack_release_archive(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liar.zip"]


def test_tiny_archives_unpack_whatever_their_ratio(tmp_path: Path) -> None:
    """Below ratio_free_bytes (1 MiB) the ratio does not apply: a 300-byte archive of a
    100 KiB text file is fine."""
    body = b"-- a comment\n" * 8000
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("release.toml", FILES["release.toml"])
        z.writestr("scripts/hello.sh", FILES["scripts/hello.sh"])
        z.writestr("scripts/report.py", FILES["scripts/report.py"])
        z.writestr("sql/comments.sql", body)
    assert archive.stat().st_size * 100 < len(body)
    unpack_release_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "sql" / "comments.sql").read_bytes() == body
