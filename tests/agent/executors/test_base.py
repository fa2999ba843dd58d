"""Tests for :class:`agent.executors.base.StepLog`: cap, redaction, line cuts, sink, threads."""

from __future__ import annotations

import re
import threading

import pytest

from agent.executors.base import MAX_LINE_CHARS, REDACTED, LogLine, StepLog

MARKER = re.compile(r"\[tiangong\] \.\.\. log cut: (\d+) lines \((\d+) bytes\) left out here")


def _kept_bytes(log: StepLog) -> int:
    return sum(len(ln.text.encode()) + 1 for ln in log.lines())


def test_small_log_is_kept_whole_and_in_order() -> None:
    log = StepLog(clock=lambda: 42.0)
    log.write("one\n", "stdout")
    log.write("two", "stderr")
    assert [(ln.seq, ln.ts, ln.stream, ln.text) for ln in log.lines()] == [
        (1, 42.0, "stdout", "one"),
        (2, 42.0, "stderr", "two"),
    ]
    assert not log.truncated
    assert log.text() == "[stdout] one\n[stderr] two\n"


def test_empty_log_text_is_empty() -> None:
    assert StepLog().text() == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\nb\n", ["a", "b"]),
        ("a\n\n", ["a", ""]),  # only one trailing newline is stripped
        ("", [""]),
        ("no newline", ["no newline"]),
    ],
)
def test_write_splits_lines(text: str, expected: list[str]) -> None:
    log = StepLog()
    log.write(text)
    assert [ln.text for ln in log.lines()] == expected


def test_cap_keeps_head_and_tail_and_marks_the_cut() -> None:
    log = StepLog(cap_bytes=1024)
    total = 1000
    for i in range(total):
        log.write(f"line {i:04d}", "stdout")  # 9 characters + newline = 10 bytes

    kept = log.lines()
    assert log.truncated
    assert _kept_bytes(log) <= 1024
    assert kept[0].text == "line 0000"
    assert kept[-1].text == f"line {total - 1:04d}"
    # the head is a run from the start, the tail a run up to the end, nothing in between
    texts = [ln.text for ln in kept]
    head_len = next(i for i, t in enumerate(texts) if t != f"line {i:04d}")
    tail = texts[head_len:]
    assert tail == [f"line {i:04d}" for i in range(total - len(tail), total)]

    match = MARKER.search(log.text())
    assert match is not None
    cut_lines, cut_bytes = int(match.group(1)), int(match.group(2))
    assert cut_lines == total - len(kept)
    assert cut_bytes == cut_lines * 10
    # the marker sits between head and tail
    rendered = log.text().splitlines()
    assert rendered[head_len].startswith("[tiangong] ... log cut:")


def test_cap_has_a_floor_of_one_kib() -> None:
    log = StepLog(cap_bytes=10)
    for i in range(500):
        log.write(f"{i:09d}")
    assert log.truncated
    assert 900 < _kept_bytes(log) <= 1024


def test_sequence_numbers_keep_counting_across_the_cut() -> None:
    log = StepLog(cap_bytes=1024)
    for i in range(300):
        log.write(f"{i:09d}")
    seqs = [ln.seq for ln in log.lines()]
    assert seqs == sorted(seqs)
    assert seqs[-1] == 300


@pytest.mark.parametrize(
    ("secrets", "text", "expected"),
    [
        (["hunter2"], "pw=hunter2;", f"pw={REDACTED};"),
        (["hunter2"], "hunter2 and hunter2", f"{REDACTED} and {REDACTED}"),
        # overlapping secrets: neither may leave a fragment behind
        (["abcd", "cdef"], "xxabcdefyy", f"xx{REDACTED}yy"),
        (["cdef", "abcd"], "xxabcdefyy", f"xx{REDACTED}yy"),
        # one secret inside another
        (["secret", "cre"], "a secret b cre c", f"a {REDACTED} b {REDACTED} c"),
        # overlapping occurrences of the same secret
        (["aaa"], "xaaaax", f"x{REDACTED}x"),
        # adjacent occurrences become one marker
        (["pw"], "pwpw!", f"{REDACTED}!"),
        # a secret that is part of the marker text does not nest markers
        (["DACT", "xyzw1"], "xyzw1 DACT", f"{REDACTED} {REDACTED}"),
        # empty secrets are ignored instead of matching everywhere
        (["", "k"], "ok", f"o{REDACTED}"),
        (["hunter2"], "nothing here", "nothing here"),
    ],
)
def test_redaction(secrets: list[str], text: str, expected: str) -> None:
    seen: list[LogLine] = []
    log = StepLog(secrets=secrets, sink=seen.append)
    log.write(text, "stdout")
    assert log.lines()[0].text == expected
    assert seen[0].text == expected


def test_multiline_secret_is_redacted_line_by_line() -> None:
    key = "-----BEGIN KEY-----\r\nAAAABBBBCCCC\r\nDDDDEEEE\r\n-----END KEY-----"
    log = StepLog(secrets=[key])
    log.write("the key:\n" + key + "\nend")  # whole value in one write
    log.write("AAAABBBBCCCC\r")  # and one line of it, as a shell reader delivers it
    text = log.text()
    for fragment in ("AAAABBBBCCCC", "DDDDEEEE", "BEGIN KEY", "END KEY"):
        assert fragment not in text
    assert "[info] the key:" in text
    assert "[info] end" in text


def test_long_line_is_cut_and_marked_in_bytes() -> None:
    log = StepLog()
    log.write("é" * (MAX_LINE_CHARS + 10))
    (line,) = log.lines()
    assert line.text == "é" * MAX_LINE_CHARS + " [line cut: 20 bytes left out]"


def test_secret_across_the_line_cut_is_redacted_before_cutting() -> None:
    log = StepLog(secrets=["hunter2"])
    log.write("x" * (MAX_LINE_CHARS - 3) + "hunter2" + "y" * 100)
    (line,) = log.lines()
    assert "hun" not in line.text
    assert line.text.startswith("x" * (MAX_LINE_CHARS - 3) + "[RE [line cut:")


@pytest.mark.parametrize(
    ("text", "expected_text", "expected_cut"),
    [
        ("abc hunt", "abc ", 100 + 4),  # the start of a secret whose rest was dropped
        ("abc hunter", "abc ", 100 + 6),
        ("abc h", "abc ", 100 + 1),
        ("abc hunter2", f"abc {REDACTED}", 100),  # whole secret: redacted, nothing extra cut
        ("abc xyz", "abc xyz", 100),
    ],
)
def test_writer_cut_drops_a_partial_secret(
    text: str, expected_text: str, expected_cut: int
) -> None:
    log = StepLog(secrets=["hunter2"])
    log.write(text, "stdout", cut_bytes=100)
    (line,) = log.lines()
    assert line.text == f"{expected_text} [line cut: {expected_cut} bytes left out]"


def test_partial_secret_is_kept_when_the_line_was_not_cut() -> None:
    # without cut_bytes the line really ended there: "hun" is output, not a secret fragment
    log = StepLog(secrets=["hunter2"])
    log.write("abc hun")
    assert log.lines()[0].text == "abc hun"


def test_sink_receives_every_line_in_order_even_past_the_cap() -> None:
    seen: list[LogLine] = []
    log = StepLog(cap_bytes=1024, sink=seen.append)
    for i in range(500):
        log.write(f"{i:09d}", "stdout")
    assert [ln.seq for ln in seen] == list(range(1, 501))
    assert [ln.text for ln in seen] == [f"{i:09d}" for i in range(500)]
    assert log.truncated


def test_concurrent_writers_get_unique_ordered_sequence_numbers() -> None:
    threads_n, lines_n = 8, 400
    seen: list[LogLine] = []
    log = StepLog(cap_bytes=16 * 1024 * 1024, sink=seen.append)
    start = threading.Barrier(threads_n)

    def writer(t: int) -> None:
        start.wait()
        for i in range(lines_n):
            log.write(f"{t} {i}", f"w{t}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    total = threads_n * lines_n
    # the sink saw every line once, in sequence order
    assert [ln.seq for ln in seen] == list(range(1, total + 1))
    kept = log.lines()
    assert [ln.seq for ln in kept] == list(range(1, total + 1))
    # each writer's lines stay in that writer's order
    for t in range(threads_n):
        mine = [ln.text for ln in kept if ln.stream == f"w{t}"]
        assert mine == [f"{t} {i}" for i in range(lines_n)]


def test_sink_may_write_to_the_log_without_deadlock() -> None:
    log: StepLog

    def sink(line: LogLine) -> None:
        if line.text == "ping":
            log.write("pong")
        log.lines()  # readers do not wait for writers

    log = StepLog(sink=sink)
    log.write("ping")
    assert [ln.text for ln in log.lines()] == ["ping", "pong"]
