"""One measured transfer of a directory of scans by scanxfer, the reference pump, or rsync.

Each run starts its receiving side fresh (empty directories, for scanxfer also a fresh sender
journal, which would otherwise skip files already delivered), sends the whole source
directory once over loopback, stops everything and returns what it measured.  The three
tools are timed the same way: from the moment the sending program starts its work to the
moment it exits, which each does only once every file is durably stored on the other side.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..procs import Proc
from .report import tls_tool

REPO = Path(__file__).resolve().parents[2]
GIVE_UP_SECONDS = 900  # a run this slow is broken, not slow


@dataclass(frozen=True)
class Run:
    """What one transfer measured; the seconds exclude the sender's interpreter start-up."""

    tool: str
    files: int
    bytes: int
    seconds: float  # from the sender's first log line (or rsync's start) to its exit
    wall_seconds: float  # from spawning the sender to its exit
    receiver_cpu_seconds: float  # receiving side, during the transfer only
    sender_cpu_seconds: float
    receiver_peak_rss_mib: float | None  # None where the receiving side is several processes
    sender_peak_rss_mib: float
    # What guarded the connection, as scanxfer's sender logged it ("TLS 1.3, AES-256-GCM"):
    # the cipher the receiver negotiated, not the one it was asked for.  None for the others.
    session: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


@contextlib.contextmanager
def cleanup(*procs: Proc) -> Iterator[None]:
    """Never leave a child behind when a run fails half-way."""
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()


def _finish(tool: str, sender: Proc, start_ns: int, cpu0: float) -> tuple[float, float, float]:
    """Wait for the sender; (seconds from start_ns, wall seconds, CPU seconds after start)."""
    status = sender.wait(GIVE_UP_SECONDS)
    if status != 0:
        raise RuntimeError(f"{tool} sender failed (exit {status}):\n{sender.log_tail()}")
    assert sender.ended_ns is not None
    seconds = (sender.ended_ns - start_ns) / 1e9
    return seconds, sender.elapsed, sender.cpu_seconds - cpu0


@contextlib.contextmanager
def scanxfer_receiver(
    work: Path, tls: bool = False, metrics: bool = False, cipher: str = "auto"
) -> Iterator[tuple[Proc, int]]:
    """`scanxfer receive` on a free loopback port with its state under `work`, and that port;
    `cipher` is its tls_cipher.

    With `metrics`, its metrics endpoint is on and scraped every SCRAPE_SECONDS meanwhile.
    """
    config = work / "receiver.yaml"
    endpoint = "metrics_listen: 127.0.0.1:0\n" if metrics else ""
    config.write_text(
        f"listen: 127.0.0.1:0\nstate_dir: {work / 'receiver'}\ntls: {str(tls).lower()}\n"
        f"tls_cipher: {cipher}\n{endpoint}"
    )
    receiver = Proc("scanxfer receive", python_module("scanxfer", "receive", "-c", str(config)))
    with cleanup(receiver):
        port = int(receiver.wait_for(r"listening on \S+:(\d+)", 60).group(1))
        if not metrics:
            yield receiver, port
            return
        found = receiver.wait_for(r"metrics on (http://\S+/metrics)", 60)
        with _scraping(found.group(1)):
            yield receiver, port


# Ten times as often as Prometheus scrapes by default (15 s): the cost shows if there is one.
SCRAPE_SECONDS = 1.5


@contextlib.contextmanager
def _scraping(url: str) -> Iterator[None]:
    """Fetch `url` every SCRAPE_SECONDS in a thread, as Prometheus would, until the block ends."""
    done = threading.Event()

    def scrape() -> None:
        while not done.wait(SCRAPE_SECONDS):
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    response.read()
            except OSError:
                return  # the receiver was stopped at the end of the run, before this thread

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def paired_sender_config(work: Path, port: int, settings: str) -> Path:
    """work/sender.yaml with `settings`, paired as a user pairs: `keys add`, then `pair`."""
    config = work / "sender.yaml"
    config.write_text(settings)
    keys_add = ["keys", "add", "bench", "-c", str(work / "receiver.yaml")]
    line = subprocess.run(
        python_module("scanxfer", "-q", *keys_add, "--address", f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(
        python_module("scanxfer", "-q", "pair", line, "-c", str(config)),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return config


def run_scanxfer(
    source: Path,
    work: Path,
    files: int,
    size: int,
    tls: bool = False,
    max_rate: int | None = None,
    metrics: bool = False,
    cipher: str = "auto",
) -> Run:
    """`scanxfer receive` and `scanxfer send --once`, both as real processes; `max_rate` sets
    the sender's bandwidth limit (bytes per second); `metrics` turns on the receiver's
    endpoint, scraped throughout (`send --once` serves none: only the sender daemon does);
    `cipher` is the receiver's tls_cipher."""
    tool = tls_tool(cipher) if tls else "scanxfer metrics" if metrics else "scanxfer"
    limit = "" if max_rate is None else f"max_rate: {max_rate}\n"
    with scanxfer_receiver(work, tls, metrics, cipher) as (receiver, port):
        sender_config = paired_sender_config(
            work, port, f"watch_dir: {source}\nstate_dir: {work / 'sender'}\n{limit}"
        )
        receiver_cpu0 = receiver.cpu_now()
        sender = Proc(
            "scanxfer send", python_module("scanxfer", "send", "-c", str(sender_config), "--once")
        )
        with cleanup(sender):
            sender.wait_for(r"sending \d+ files", 60)
            start_ns, _ = sender.stamped(r"sending \d+ files")[0]
            sender_cpu0 = sender.cpu_now()
            seconds, wall, sender_cpu = _finish(tool, sender, start_ns, sender_cpu0)
        receiver.note_peak_rss()
        receiver_cpu = receiver.cpu_now() - receiver_cpu0
        receiver.stop()
    return Run(
        tool,
        files,
        size,
        seconds,
        wall,
        receiver_cpu,
        sender_cpu,
        receiver.peak_rss_kib / 1024,
        sender.peak_rss_kib / 1024,
        _session(sender),
    )


def _session(sender: Proc) -> str:
    """The sender's 'connected to receiver ADDRESS: TLS 1.3, CIPHER' line, after the colon;
    a run on more than one connection must have used the same protection throughout."""
    said = set(re.findall(r"connected to receiver \S+: (.+)", sender.log))
    if len(said) != 1:
        raise RuntimeError(f"the sender connected {len(said)} ways: {sorted(said)}")
    return said.pop()


def run_pump(source: Path, work: Path, files: int, size: int) -> Run:
    """The reference pump (tests/bench/pump.py): receiver and sender as real processes."""
    receiver = Proc(
        "pump receive", python_module("tests.bench.pump", "receive", "--dir", str(work)), REPO
    )
    with cleanup(receiver):
        port = int(receiver.wait_for(r"listening on \S+:(\d+)", 60).group(1))
        receiver_cpu0 = receiver.cpu_now()
        argv = ["send", "--to", f"127.0.0.1:{port}", "--source", str(source)]
        report = work / "pump-report.json"
        sender = Proc(
            "pump send", python_module("tests.bench.pump", *argv, "--report", str(report)), REPO
        )
        with cleanup(sender):
            sender.wait_for(r"sending \d+ files", 60)
            start_ns, _ = sender.stamped(r"sending \d+ files")[0]
            sender_cpu0 = sender.cpu_now()
            seconds, wall, sender_cpu = _finish("pump", sender, start_ns, sender_cpu0)
        if receiver.wait(60) != 0:
            raise RuntimeError(f"pump receiver failed:\n{receiver.log_tail()}")
    return Run(
        "pump",
        files,
        size,
        seconds,
        wall,
        receiver.cpu_seconds - receiver_cpu0,
        sender_cpu,
        receiver.peak_rss_kib / 1024,
        sender.peak_rss_kib / 1024,
    )


def rsync_problem() -> str | None:
    """Why rsync cannot be measured here, or None when it can (with --fsync)."""
    if shutil.which("rsync") is None:
        return "rsync is not installed (make bench installs it with apt-get)"
    usage = subprocess.run(["rsync", "--help"], capture_output=True, text=True).stdout
    if "--fsync" not in usage:
        return "this rsync has no --fsync option (it needs rsync >= 3.2.4)"
    return None


def rsync_version() -> str:
    if shutil.which("rsync") is None:
        return "not installed"
    first = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version (\S+)", first)
    return match.group(1) if match else "unknown"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rsyncd_conf(work: Path, dest: Path) -> Path:
    """A daemon config of our own: one writable module, no chroot, runs as the current user."""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    conf = work / "rsyncd.conf"
    conf.write_text(
        f"pid file = {work / 'rsyncd.pid'}\n"
        "use chroot = no\n"
        f"uid = {user}\n"
        f"gid = {group}\n"
        "[bench]\n"
        f"path = {dest}\n"
        "read only = no\n"
    )
    return conf


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _wait_until_childless(daemon: Proc) -> None:
    """The daemon's workers end just after the client; their CPU counts once reaped."""
    deadline = time.monotonic() + 30
    while _children(daemon.pid):
        if time.monotonic() > deadline:
            raise RuntimeError("the rsync daemon's workers did not finish")
        time.sleep(0.02)


def _wait_for_port(port: int, daemon: Proc) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if daemon.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the rsync daemon did not start:\n{daemon.log_tail()}")
        time.sleep(0.05)


def run_rsync(source: Path, work: Path, files: int, size: int, fsync: bool) -> Run:
    """`rsync -a --whole-file [--fsync]` into an rsync daemon started on a free loopback port."""
    dest = work / "dest"
    dest.mkdir(parents=True)
    port = _free_port()
    conf = _rsyncd_conf(work, dest)
    argv = ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}"]
    log = f"--log-file={work / 'rsyncd.log'}"
    daemon = Proc("rsync daemon", [*argv, "--address=127.0.0.1", log])
    with cleanup(daemon):
        _wait_for_port(port, daemon)
        _wait_until_childless(daemon)  # the probe's worker
        daemon_cpu0 = daemon.cpu_now()
        options = ["-a", "--whole-file", *(["--fsync"] if fsync else [])]
        client = Proc(
            "rsync", ["rsync", *options, f"{source}/", f"rsync://127.0.0.1:{port}/bench/"]
        )
        with cleanup(client):
            seconds, wall, client_cpu = _finish("rsync", client, client.started_ns, 0.0)
        _wait_until_childless(daemon)
        daemon_cpu = daemon.cpu_now() - daemon_cpu0
        daemon.stop()
    label = "rsync --fsync" if fsync else "rsync (no --fsync)"
    rss = client.peak_rss_kib / 1024
    return Run(label, files, size, seconds, wall, daemon_cpu, client_cpu, None, rss)
