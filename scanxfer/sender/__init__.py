"""The sender: deliver every complete scan exactly once, durably, across any failure.

`scanxfer send --once` delivers what is there and exits; without it the sender
watches the directory until SIGTERM, re-reading its settings on SIGHUP.  The
pieces: `delivery` (queue, retries, journal), `transport` (the seam to the wire)
with its two kinds `session` (the scanxfer protocol, one connection) and
`prototype` (`send --legacy`, to an old prototype receiver), `job` (one file on
its way), `ledger` (the journal), `handoff` (keep / move / delete after the ACK),
`status` (`scanxfer status`), `status_file` (the daemon's account of itself that it reads),
`retry` (backoff and the clock), `run_state` (progress, the link's state, the totals), `pacing`
(`max_rate`), `progress` (the bar), `metrics` (what metrics_listen serves).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from types import FrameType
from typing import TYPE_CHECKING, NamedTuple

from .. import scrape
from ..config import Address, ConfigError, SenderConfig
from ..errors import ExitCode, ScanxferError
from ..scrape import Endpoint
from ..systemd import Notifier
from ..watcher import CompletionWatcher, Condition, assess, scan
from .delivery import Delivery
from .ledger import Destination, Ledger
from .progress import ProgressBar, summary
from .prototype import PROTOTYPE
from .run_state import Progress, Tally
from .session import NOT_PAIRED, SCANXFER
from .status_file import StatusFile
from .transport import TransportKind

if TYPE_CHECKING:
    from .metrics import SenderCollector

log = logging.getLogger("scanxfer.sender")

# How often a missing watch folder is looked for.
WATCH_DIR_POLL_SECONDS = 1.0

# The ways to deliver, by the name `run` is given; a new transport is added here.
TRANSPORTS: dict[str, TransportKind] = {kind.name: kind for kind in (SCANXFER, PROTOTYPE)}


def run(
    config: SenderConfig,
    once: bool,
    reload: Callable[[], SenderConfig] | None = None,
    transport: str = SCANXFER.name,
    resend: Sequence[str] = (),
) -> int:
    """`scanxfer send`: deliver what is there (--once) or keep watching.

    `transport` names the kind of receiver in `TRANSPORTS`: "prototype" is an old
    prototype receiver, which knows no keys (see `prototype`).  Files whose relative path
    matches a `resend` pattern are forgotten by the journal first, so they are sent again.
    """
    kind = TRANSPORTS[transport]
    if config.key is None and kind.needs_key:
        log.error("%s", NOT_PAIRED)
        return ExitCode.USAGE
    stop, reload_requested = threading.Event(), threading.Event()
    _install_signal_handlers(stop, reload_requested)
    try:
        ledger = Ledger(config.state_dir, Destination.of(config, kind.name))
    except (OSError, sqlite3.Error) as error:
        # Rerunning cannot help (exit 2, which the unit does not restart on): it needs a hand.
        log.error(
            "cannot keep the sender's journal in %s: %s; make that folder writable for this "
            "user, or set state_dir in the settings to one that is",
            config.state_dir,
            getattr(error, "strerror", None) or error,
        )
        return ExitCode.USAGE
    try:
        _forget_for_resend(ledger, resend)
        if once:
            return _run_once(config, ledger, stop, kind)
    finally:
        ledger.close()
    return _run_daemon(config, stop, reload_requested, reload, kind)


def _forget_for_resend(ledger: Ledger, patterns: Sequence[str]) -> None:
    if not patterns:
        return
    forgotten = ledger.forget_matching(patterns)
    where = f"to {ledger.destination.receiver} from {ledger.destination.watch_dir}"
    if forgotten:
        log.info(
            "sending again %d files delivered %s: %s",
            len(forgotten),
            where,
            ", ".join(forgotten[:10]) + (", ..." if len(forgotten) > 10 else ""),
        )
    else:
        log.warning("--resend %s: no file delivered %s matches", " ".join(patterns), where)


def _install_signal_handlers(stop: threading.Event, reload_requested: threading.Event) -> None:
    # The first SIGINT or SIGTERM only sets a flag: the loops, and a file being hashed or sent
    # between two slices, notice it within a fraction of a second and stop cleanly.  A second
    # one is someone who will not wait even that long: it ends the run where it is (exit 130;
    # the journal is SQLite, and the receiver keeps its partial either way).
    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    def request_reload(signum: int, _frame: FrameType | None) -> None:
        reload_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)


def _run_once(
    config: SenderConfig, ledger: Ledger, stop: threading.Event, kind: TransportKind
) -> int:
    progress = Progress()
    bar = ProgressBar.for_terminal(progress)
    # The bar is drawn from the delivery's sign of life, so it moves between slices of a file.
    delivery = Delivery(
        config, ledger, once=True, kind=kind, stop=stop, alive=bar.draw, progress=progress
    )
    if not config.watch_dir.is_dir():
        log.error(
            "watch directory %s does not exist; pass --watch DIR or set watch_dir", config.watch_dir
        )
        return ExitCode.USAGE
    for relpath in scan(config.watch_dir, config.patterns, config.ignore):
        if stop.is_set():
            break
        readiness = assess(config.watch_dir / relpath)
        if readiness.ready:
            delivery.add(relpath.as_posix())
        elif readiness.condition is Condition.UNREADABLE:
            delivery.unreadable(relpath.as_posix(), readiness)
        elif readiness.condition is not Condition.GONE:
            log.warning("skipping %s: %s", relpath, readiness.reason)
            delivery.skipped.append((relpath.as_posix(), readiness.reason))
    total = delivery.progress.files_total
    log.info("sending %d files from %s to %s", total, config.watch_dir, config.receiver)
    if total == 0 and not delivery.failed:
        delivery.reach()  # "nothing to send" holds only for a receiver that answers
    with bar:
        while not delivery.finished:
            delivery.step()
            bar.draw()
    delivery.close()
    return _once_result(delivery)


def _once_result(delivery: Delivery) -> int:
    # Files found not complete at their turn left the count: they are not owed by this run.
    total, done = delivery.progress.files_total, delivery.progress.files_done
    if total:
        log.info("%s", summary(delivery.progress, time.monotonic()))
    if delivery.stop.is_set() and done < total:
        log.warning(
            "interrupted: %d of %d files delivered; run again to send the rest (a file cut "
            "short resumes where it stopped)",
            done,
            total,
        )
        return ExitCode.INTERRUPTED
    if delivery.skipped:
        log.warning(
            "%d files were not complete, so not sent; run again once they are: %s",
            len(delivery.skipped),
            ", ".join(path for path, _ in delivery.skipped[:10]),
        )
    if delivery.unreachable and total == 0:
        log.error(
            "gave up: %s; nothing new to send, but the receiver did not confirm it",
            delivery.unreachable,
        )
        return ExitCode.UNREACHABLE
    if delivery.unreachable:
        log.error("gave up: %s; %d of %d files delivered", delivery.unreachable, done, total)
        return ExitCode.UNREACHABLE
    if delivery.failed or done < total:
        names = ", ".join(path for path, _ in delivery.failed[:10]) or "interrupted"
        log.error("%d of %d files delivered; not delivered: %s", done, total, names)
        return ExitCode.FAILED
    if total:
        log.info(delivery.kind.done_message, total)
    elif not delivery.skipped:
        skipped = delivery.progress.files_already_delivered
        log.info("nothing to send: %d files already delivered", skipped)
    return ExitCode.OK


def _run_daemon(
    config: SenderConfig,
    stop: threading.Event,
    reload_requested: threading.Event,
    reload: Callable[[], SenderConfig] | None,
    kind: TransportKind,
) -> int:
    notifier = Notifier()
    status = StatusFile(config.state_dir)
    delivered = 0
    tally = Tally()
    try:
        metrics = _open_metrics(config, tally)
    except ScanxferError as error:
        log.error("%s", error)
        return error.exit_code

    def alive() -> None:  # a sign of life for systemd, and fresh bytes for `scanxfer status`
        notifier.alive()
        status.update()

    while not stop.is_set():
        # A reload may name another receiver or watch folder: the journal follows it.
        destination = Destination.of(config, kind.name)
        ledger = Ledger(config.state_dir, destination)
        delivery = Delivery(
            config, ledger, once=False, kind=kind, stop=stop, alive=alive, tally=tally
        )
        status.follow(delivery, destination)
        if metrics is not None:
            metrics.collector.follow(delivery)
        try:
            _watch_and_deliver(delivery, notifier, reload_requested, status)
            delivered += delivery.progress.files_done
            delivery.close()
        finally:
            ledger.close()
        if reload_requested.is_set():
            config = _reloaded(config, reload, reload_requested, notifier)
            if metrics is not None and config.metrics_listen != metrics.listen:
                log.warning(
                    "metrics_listen changed to %s; restart the sender to apply it "
                    "(systemctl --user restart scanxfer-sender)",
                    config.metrics_listen,
                )
    if metrics is not None:
        metrics.endpoint.close()
    status.stopped()
    notifier.stopping()
    log.info("stopped; %d files delivered", delivered)
    return ExitCode.OK


class _Metrics(NamedTuple):
    listen: Address  # the setting it was opened with: a reload does not move it
    endpoint: Endpoint
    collector: SenderCollector


def _open_metrics(config: SenderConfig, tally: Tally) -> _Metrics | None:
    """The metrics endpoint where metrics_listen says (bound once: a reload keeps it)."""
    if config.metrics_listen is None:
        return None
    scrape.library()  # first: its error names the package to install
    from .metrics import SenderCollector  # needs prometheus_client: only when asked for

    collector = SenderCollector(tally)
    address = config.metrics_listen
    return _Metrics(address, Endpoint(address.host, address.port, collector), collector)


def _watch_and_deliver(
    delivery: Delivery, notifier: Notifier, reload_requested: threading.Event, status: StatusFile
) -> None:
    """Run one watcher and delivery until a stop or a reload is requested."""
    config = delivery.config
    if not _watch_dir_appeared(config, delivery.stop, reload_requested, notifier):
        return
    watcher = CompletionWatcher(
        config.watch_dir,
        config.patterns,
        config.ignore,
        config.settle_seconds,
        config.watch_method,
    )
    with watcher:
        delivery.reconsider = lambda relpath: watcher.reconsider(PurePosixPath(relpath))
        log.info("watching %s, delivering to %s", config.watch_dir, config.receiver)
        notifier.ready()
        shown = ""
        while not delivery.stop.is_set() and not reload_requested.is_set():
            # Block on the watcher only when there is nothing else to do.
            wait = 0.5 if delivery.finished else 0.0
            while (relpath := watcher.get(timeout=wait)) is not None:
                delivery.add(relpath.as_posix())
                wait = 0.0
            for relpath, readiness in watcher.unreadable():
                delivery.unreadable(relpath.as_posix(), readiness)
            delivery.step()
            status.update()
            notifier.watchdog()
            if (line := _status_line(delivery)) != shown:
                notifier.status(line)
                shown = line


def _watch_dir_appeared(
    config: SenderConfig,
    stop: threading.Event,
    reload_requested: threading.Event,
    notifier: Notifier,
) -> bool:
    """Wait until the watch folder exists: False if a stop or a reload came first.

    The service never creates the folder: a typo in watch_dir would then be watched, silently,
    instead of the instrument's folder.  It waits instead, so a folder on a drive or share
    mounted after login is picked up as soon as it appears.
    """
    if config.watch_dir.is_dir():
        return True
    log.error(
        "watch folder %s does not exist; waiting for it to appear (create it, or fix watch_dir "
        "in the settings and run: systemctl --user reload scanxfer-sender)",
        config.watch_dir,
    )
    notifier.ready()
    notifier.status(f"waiting for the watch folder {config.watch_dir} to appear")
    while not config.watch_dir.is_dir():
        if stop.wait(WATCH_DIR_POLL_SECONDS) or reload_requested.is_set():
            return False
        notifier.watchdog()
    log.info("watch folder %s appeared", config.watch_dir)
    return True


def _reloaded(
    config: SenderConfig,
    reload: Callable[[], SenderConfig] | None,
    reload_requested: threading.Event,
    notifier: Notifier,
) -> SenderConfig:
    reload_requested.clear()
    if reload is None:
        return config
    notifier.reloading()
    try:
        config = reload()
    except ConfigError as error:
        log.error("reload failed, keeping the previous settings: %s", error)
    else:
        log.info("settings reloaded")
    return config


def _status_line(delivery: Delivery) -> str:
    waiting = len(delivery.pending) + len(delivery.delayed)
    return (
        f"{delivery.progress.files_done} files delivered; {waiting} waiting, "
        f"{delivery.in_flight} in flight"
    )
