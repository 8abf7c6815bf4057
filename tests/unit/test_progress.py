"""The --once progress bar: what it says, and that only a terminal gets it."""

from __future__ import annotations

import io
import logging

import pytest

from scanxfer.sender.delivery import Progress
from scanxfer.sender.progress import CLEAR_LINE, ProgressBar


def test_the_line_shows_files_bytes_rate_and_eta() -> None:
    progress = Progress(files_total=4, bytes_total=4 << 20, files_done=1, bytes_done=1 << 20)
    line = ProgressBar(progress, io.StringIO()).line(progress.started + 1.0)
    assert line.startswith("1/4 files  1.0 MiB/4.0 MiB  1.0 MB/s  ETA 0:03")


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
