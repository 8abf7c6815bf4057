"""The --once progress bar: what it says, and that only a terminal gets it."""

from __future__ import annotations

import io
import logging

import pytest

from scanxfer.sender.progress import CLEAR_LINE, ProgressBar, summary
from scanxfer.sender.run_state import Progress


def test_the_line_shows_files_bytes_rate_and_eta() -> None:
    progress = Progress(files_total=4, bytes_total=4 << 20)
    progress.sent("a.npy", 1 << 20)
    progress.delivered("a.npy", 1 << 20)
    line = ProgressBar(progress, io.StringIO()).line(progress.started + 1.0)
    assert line.startswith("1/4 files  1.0 MiB/4.0 MiB  1.0 MB/s  ETA 0:03")


def test_bytes_count_as_they_are_sent_and_a_resume_as_resumed() -> None:
    progress = Progress(files_total=1, bytes_total=10 << 20)
    bar = ProgressBar(progress, io.StringIO())
    progress.resumed("big.npy", 4 << 20)
    progress.sent("big.npy", 2 << 20)
    line = bar.line(progress.started + 2.0)
    # Not yet answered, yet 6 of 10 MiB are done: 4 the receiver had, 2 sent at 1 MiB/s.
    assert line.startswith("0/1 files  6.0 MiB/10.0 MiB (4.0 MiB resumed)  1.0 MB/s  ETA 0:04")
    progress.delivered("big.npy", 10 << 20)
    assert progress.bytes_moved == 10 << 20
    assert progress.under_way == {}


def test_the_rate_follows_the_last_seconds() -> None:
    progress = Progress(files_total=1, bytes_total=100 << 20)
    bar = ProgressBar(progress, io.StringIO())
    for second in range(1, 11):  # 1 MB a second for 10 s...
        progress.sent("a.npy", 1_000_000)
        bar.line(progress.started + second)
    for second in range(11, 21):  # ...then 4 MB a second
        progress.sent("a.npy", 4_000_000)
        line = bar.line(progress.started + second)
    assert "  4.0 MB/s  " in line


def test_the_summary_names_files_bytes_time_rate_and_resumed() -> None:
    progress = Progress(files_total=2, bytes_total=30_000_000)
    progress.resumed("a.npy", 10_000_000)
    progress.sent("a.npy", 10_000_000)
    progress.delivered("a.npy", 20_000_000)
    progress.sent("b.npy", 10_000_000)
    progress.delivered("b.npy", 10_000_000)
    assert summary(progress, progress.started + 65) == (
        "2 of 2 files delivered (28.6 MiB) in 1:05; 19.1 MiB sent at 0.3 MB/s on average, "
        "9.5 MiB of it already on the receiver (resumed)"
    )


def test_quiet_hides_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    logging.getLogger("scanxfer").setLevel(logging.WARNING)  # what -q does
    assert ProgressBar.for_terminal(Progress()).stream is None
    logging.getLogger("scanxfer").setLevel(logging.INFO)
    assert ProgressBar.for_terminal(Progress()).stream is not None


def test_redirected_output_gets_no_bar(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar.for_terminal(Progress(files_total=1, bytes_total=1))
    with bar:
        bar.draw()
    assert bar.stream is None
    assert capsys.readouterr().err == ""


def test_a_log_line_wipes_the_bar_first() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("scanxfer")
    logger.addHandler(handler)
    try:
        with ProgressBar(Progress(files_total=2, bytes_total=2), stream) as bar:
            bar.draw()
            logging.getLogger("scanxfer.sender").warning("hello")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.index("0/2 files") < text.index(CLEAR_LINE + "hello")
