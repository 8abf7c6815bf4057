"""The sender: deliver every complete scan exactly once, durably, across any failure.

`scanxfer send --once` delivers what is there and exits; without it the sender
watches the directory until SIGTERM, re-reading its settings on SIGHUP.  The
pieces: `session` (one connection), `delivery` (queue, retries, journal),
`handoff` (keep / move / delete after the ACK), `status` (`scanxfer status`),
`legacy` (`send --legacy`, to an old prototype receiver).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import PurePosixPath
from types import FrameType

from ..config import ConfigError, SenderConfig
from ..errors import ExitCode
from ..systemd import Notifier
from ..watcher import CompletionWatcher, Condition, assess, scan
from .delivery import Delivery
from .ledger import Ledger
from .progress import ProgressBar
from .session import NOT_PAIRED

log = logging.getLogger("scanxfer.sender")

def run(
    config: SenderConfig,
    once: bool,
    reload: Callable[[], SenderConfig] | None = None,
    legacy: bool = False,
) -> int:
    """`scanxfer send`: deliver what is there (--once) or keep watching.

    `legacy` sends to an old prototype receiver instead, which knows no keys (see `legacy`).
    """
    if config.key is None and not legacy:
        log.error("%s", NOT_PAIRED)
        return ExitCode.USAGE
    stop, reload_requested = threading.Event(), threading.Event()
    _install_signal_handlers(stop, reload_requested)
    ledger = Ledger(config.state_dir)
    try:
        if once:
            return _run_once(Delivery(config, ledger, once=True, stop=stop, legacy=legacy))
        return _run_daemon(config, ledger, stop, reload_requested, reload, legacy)
    finally:
        ledger.close()


def _install_signal_handlers(stop: threading.Event, reload_requested: threading.Event) -> None:
    # Handlers only set flags; the loops notice within a fraction of a second.
    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    def request_reload(signum: int, _frame: FrameType | None) -> None:
        reload_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)


def _run_once(delivery: Delivery) -> int:
    config = delivery.config
    if not config.watch_dir.is_dir():
        log.error(
            "watch directory %s does not exist; pass --watch DIR or set watch_dir", config.watch_dir
        )
        return ExitCode.USAGE
    for relpath in scan(config.watch_dir, config.patterns, config.ignore):
        readiness = assess(config.watch_dir / relpath)
        if readiness.ready:
            delivery.add(relpath.as_posix())
        elif readiness.condition is Condition.UNREADABLE:
            log.error("cannot send %s: %s", relpath, readiness.reason)
            delivery.failed.append((relpath.as_posix(), readiness.reason))
        elif readiness.condition is not Condition.GONE:
            log.warning("skipping %s: %s", relpath, readiness.reason)
            delivery.skipped.append((relpath.as_posix(), readiness.reason))
    total = delivery.progress.files_total
    log.info("sending %d files from %s to %s", total, config.watch_dir, config.receiver)
    with ProgressBar.for_terminal(delivery.progress) as bar:
        while not delivery.finished:
            delivery.step()
            bar.draw()
    delivery.close()
    return _once_result(delivery)


def _once_result(delivery: Delivery) -> int:
    # Files found not complete at their turn left the count: they are not owed by this run.
    total, done = delivery.progress.files_total, delivery.progress.files_done
    if delivery.skipped:
        log.warning(
            "%d files were not complete, so not sent; run again once they are: %s",
            len(delivery.skipped),
            ", ".join(path for path, _ in delivery.skipped[:10]),
        )
    if delivery.unreachable:
        log.error("gave up: %s; %d of %d files delivered", delivery.unreachable, done, total)
        return ExitCode.UNREACHABLE
    if delivery.failed or done < total:
        names = ", ".join(path for path, _ in delivery.failed[:10]) or "interrupted"
        log.error("%d of %d files delivered; not delivered: %s", done, total, names)
        return ExitCode.FAILED
    if total and delivery.legacy:
        log.info("all %d files sent; the prototype receiver confirms nothing more", total)
    elif total:
        log.info("all %d files delivered and stored durably", total)
    elif not delivery.skipped:
        skipped = delivery.progress.files_already_delivered
        log.info("nothing to send: %d files already delivered", skipped)
    return ExitCode.OK


def _run_daemon(
    config: SenderConfig,
    ledger: Ledger,
    stop: threading.Event,
    reload_requested: threading.Event,
    reload: Callable[[], SenderConfig] | None,
    legacy: bool,
) -> int:
    notifier = Notifier()
    delivered = 0
    while not stop.is_set():
        delivery = Delivery(
            config, ledger, once=False, stop=stop, legacy=legacy, alive=notifier.alive
        )
        _watch_and_deliver(delivery, notifier, reload_requested)
        delivered += delivery.progress.files_done
        delivery.close()
        if reload_requested.is_set():
            config = _reloaded(config, reload, reload_requested, notifier)
    notifier.stopping()
    log.info("stopped; %d files delivered", delivered)
    return ExitCode.OK


def _watch_and_deliver(
    delivery: Delivery, notifier: Notifier, reload_requested: threading.Event
) -> None:
    """Run one watcher and delivery until a stop or a reload is requested."""
    config = delivery.config
    config.watch_dir.mkdir(parents=True, exist_ok=True)
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
            delivery.step()
            notifier.watchdog()
            if (line := _status_line(delivery)) != shown:
                notifier.status(line)
                shown = line


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
    in_flight = len(delivery.session.inflight) if delivery.session else 0
    return (
        f"{delivery.progress.files_done} files delivered; {waiting} waiting, {in_flight} in flight"
    )
