"""Names of release files: the syntax rules and the collision check (docs/release-format.md §4).

A release file is named by its path relative to the release directory, in POSIX form
(``sql/001_schema.sql``). The same rules apply to a name found while walking a directory, a
name referenced by a step, and a member name in an uploaded release archive, so that every
side of Tiangong (hub, agent, web upload) accepts exactly the same set of names.

Agents may stage files on case-insensitive or normalising filesystems (Windows, macOS), so two
names that differ only in letter case or in Unicode normalisation would land on one file
there: :class:`NameSet` refuses such pairs, and also a file whose name equals (after folding)
a directory of another file.

This module does no I/O and knows nothing about steps or archives.
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "MAX_FILE_NAME_BYTES",
    "NameSet",
    "file_name_problem",
    "fold_name",
    "is_hidden",
]

#: Longest release file name: the whole relative path, UTF-8 encoded (in bytes).
MAX_FILE_NAME_BYTES = 255  # bytes


def file_name_problem(name: object, max_bytes: int = MAX_FILE_NAME_BYTES) -> str | None:
    """Return why ``name`` is not a valid release file name, or ``None`` if it is valid.

    The reason is a phrase completing "file name ... " (e.g. ``"contains '..'"``). Hidden
    names are valid here; whether they are part of a release is :func:`is_hidden`'s business.
    """
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not name:
        return "is empty"
    for pos, ch in enumerate(name):
        if "\udc80" <= ch <= "\udcff":  # os.fsdecode() of a byte that is not UTF-8
            return f"is not valid UTF-8 (byte 0x{ord(ch) - 0xDC00:02X} at position {pos + 1})"
        # isprintable() is False for control, format, surrogate, private-use, unassigned and
        # separator characters other than the ASCII space.
        if not ch.isprintable():
            return f"contains the non-printable character U+{ord(ch):04X} at position {pos + 1}"
    if "\\" in name:
        return "contains a backslash; separate directories with '/'"
    if name.startswith("/"):
        return "is absolute; give the path relative to the release directory"
    size = len(name.encode("utf-8"))
    if size > max_bytes:
        return f"is {size} bytes long in UTF-8; the limit is {max_bytes} bytes"
    for part in name.split("/"):
        if part == "":
            return "has an empty path component ('//' or a '/' at the end)"
        if part == "..":
            return "contains '..'; names must stay inside the release directory"
        if part == ".":
            return "contains a '.' path component"
    return None


def is_hidden(name: str) -> bool:
    """Whether any component of the relative POSIX ``name`` starts with ``'.'``."""
    return any(part.startswith(".") for part in name.split("/"))


def fold_name(name: str) -> str:
    """The key two names collide on: Unicode canonical caseless form (NFD, casefold, NFD)."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


class NameSet:
    """Names added so far, refusing any that would collide on a case-insensitive filesystem.

    Directories are implied by file names (``a/b.txt`` implies ``a``) or added explicitly.
    """

    def __init__(self) -> None:
        # folded name -> (name as first seen, is_dir)
        self._seen: dict[str, tuple[str, bool]] = {}

    def add(self, name: str, is_dir: bool = False) -> str | None:
        """Add a valid name (see :func:`file_name_problem`).

        Returns ``None`` when accepted, or a reason phrase when it collides, e.g.
        ``"collides with 'SQL/a.sql': names must differ in more than letter case ..."``.
        A directory added twice, or implied twice, is not a collision.
        """
        parts = name.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            sub_is_dir = depth < len(parts) or is_dir
            key = fold_name(sub)
            seen = self._seen.get(key)
            if seen is None:
                self._seen[key] = (sub, sub_is_dir)
                continue
            seen_name, seen_is_dir = seen
            if seen_name == sub and seen_is_dir and sub_is_dir:
                continue
            if seen_name == sub:
                if not seen_is_dir and not sub_is_dir:
                    return "appears twice"
                return f"needs {sub!r} as both a file and a directory"
            which = "" if sub == name else f"(through its directory {sub!r}) "
            return (
                f"{which}collides with {seen_name!r}: names must differ in more than "
                "letter case or Unicode normalisation"
            )
        return None

    def __len__(self) -> int:
        return len(self._seen)
