"""The receiver's status page in a real headless browser, during a transfer.

Debian's chromium, as tests/system/prerequisites.sh installs it (Playwright's browsers cannot
be downloaded here). The screenshot is kept as a test artifact in build/artifacts/.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from .attack import StartReceiver
from .harness import TEST_SENDER, sender_config, start_sender, wait_for_files, write_scan
from .test_metrics import metrics_port

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "artifacts"
BROWSER_SECONDS = 120


def chromium() -> str:
    path = shutil.which("chromium")
    assert path is not None, (
        "chromium is missing: run `bash tests/system/prerequisites.sh` (it installs Debian's "
        "chromium), or `sudo apt install chromium`"
    )
    return path


def browse(url: str, profile: Path, *options: str) -> str:
    """Run headless chromium on `url` with its own profile and home; its stdout.

    It runs in a session of its own, which is killed whole afterwards: chromium leaves
    helper processes behind when it is cut short.
    """
    home = profile / "home"
    home.mkdir(parents=True, exist_ok=True)
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={profile / 'data'}", *options, url]  # fmt: skip
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}  # fmt: skip
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=BROWSER_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, f"chromium failed ({process.returncode}):\n{err}"
    return out


def test_the_status_page_shows_the_sender_and_its_last_file(
    tmp_path: Path, start_receiver: StartReceiver
) -> None:
    receiver = start_receiver(metrics_listen="127.0.0.1:0")
    assert receiver.child is not None
    url = f"http://127.0.0.1:{metrics_port(receiver.child)}/"
    scans = tmp_path / "scans"
    names = [f"run7/scan-{index:03}.npy" for index in range(3)]
    sender = start_sender(sender_config(tmp_path / "sender.yaml", receiver.port, scans))
    try:
        for index, name in enumerate(names):
            write_scan(scans / name, (4096,), index)
            wait_for_files(receiver, [name], sender)
        dom = browse(url, tmp_path / "browser", "--dump-dom")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        browse(url, tmp_path / "browser", f"--screenshot={shot}", "--window-size=1100,700")
    finally:
        sender.stop()

    senders = re.search(r"<table id=\"?senders\"?>(.*?)</table>", dom, re.S)
    assert senders is not None, dom
    row = re.search(rf"<tr><td>{TEST_SENDER}</td>(.*?)</tr>", senders.group(1), re.S)
    assert row is not None, senders.group(1)
    assert names[-1] in row.group(1)  # its last file
    assert ">3<" in row.group(1)  # files today
    recent = re.search(r"<table id=\"?recent\"?>(.*?)</table>", dom, re.S)
    assert recent is not None and all(name in recent.group(1) for name in names), dom
    assert shot.stat().st_size > 0
