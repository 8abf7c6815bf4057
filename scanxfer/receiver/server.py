"""The main loop: the doors' listeners, signals, reload, sd_notify.

Connections run in threads of their own (see `doors`); this thread only accepts, watches
signals and talks to systemd, so a slow fsync in one connection stalls nobody else.
"""

from __future__ import annotations

import logging
import selectors
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..config import ConfigError, ReceiverConfig
from ..sizes import counted
from ..store import StoreSetupError
from ..store.setup import check as check_folders
from ..systemd import Notifier
from .doors import Door
from .protocol_door import ProtocolDoor
from .prototype_door import PrototypeDoor
from .shared import Services

log = logging.getLogger("scanxfer.receiver")

# Settings bound at start (sockets, the store, the certificate); a reload only warns.
RESTART_ONLY = (
    "listen",
    "state_dir",
    "incoming_dir",
    "partial_dir",
    "tls",
    "tls_cipher",
    "legacy_listen",
    "metrics_listen",
)
STATUS_SECONDS = 1.0

AnyDoor = Door[Any]


class Server:
    """Accept loop, signals, sd_notify over a list of doors; the first is the scanxfer door."""

    def __init__(
        self,
        config: ReceiverConfig,
        services: Services,
        reload: Callable[[], ReceiverConfig] | None,
    ) -> None:
        self.config, self.services, self.reload = config, services, reload
        # What the sockets, the store and the certificate were set up with: a RESTART_ONLY
        # setting is pending only while it differs from this.
        self.in_effect = config
        self.reload_requested = threading.Event()
        self.notifier = Notifier()
        self.doors = open_doors(config, services)
        self._wake_read, self._wake_write = socket.socketpair()

    @property
    def stopping(self) -> threading.Event:
        return self.services.stopping

    def serve_forever(self) -> None:
        self._install_signal_handlers()
        selector = selectors.DefaultSelector()
        selector.register(self._wake_read, selectors.EVENT_READ)
        for door in self.doors:
            selector.register(door.listener, selectors.EVENT_READ, door)
        address = self.doors[0].address
        incoming = self.services.store.incoming_dir
        log.info("listening on %s:%d, storing into %s", address.host, address.port, incoming)
        self.notifier.ready()
        stats = self.services.stats
        shown = stats.status_line()
        self.notifier.status(shown)
        # At least once a second, so `systemctl status` follows the transfers closely.
        tick = min(self.notifier.watchdog_interval() or STATUS_SECONDS, STATUS_SECONDS)
        while not self.stopping.is_set():
            for key, _ in selector.select(timeout=tick):
                if isinstance(key.data, Door):
                    key.data.accept()
                else:
                    self._wake_read.recv(64)
            if self.reload_requested.is_set():
                self._reload()
            for door in self.doors:
                door.tick()
            stats.connections = self._open_connections()
            self.notifier.watchdog()
            if (line := stats.status_line()) != shown:
                self.notifier.status(line)
                shown = line
        self._shutdown()

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            # Only set a flag and wake the loop: real work in a handler is unsafe.
            self.stopping.set()
            self._wake_write.send(b"\0")

        def request_reload(signum: int, _frame: FrameType | None) -> None:
            self.reload_requested.set()
            self._wake_write.send(b"\0")

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGHUP, request_reload)

    def _tell_restart_only(self, config: ReceiverConfig) -> None:
        """Say what a change of a RESTART_ONLY setting means, once per change.

        Compared with the value in effect, not with the previous reload's: a value set back
        to the one in use needs no restart any more.
        """
        for key in RESTART_ONLY:
            new, before = getattr(config, key), getattr(self.config, key)
            if new == before:
                continue
            if new == getattr(self.in_effect, key):
                log.info("%s is back to %s, the value in use; no restart needed", key, new)
            else:
                log.warning("%s changed to %s; restart the receiver to apply it", key, new)

    def _reload(self) -> None:
        """Apply new settings to new connections; the ones open keep theirs."""
        self.reload_requested.clear()
        if self.reload is None:
            return
        self.notifier.reloading()
        try:
            config = self.reload()
        except ConfigError as error:
            log.error("reload failed, keeping the previous settings: %s", error)
        else:
            self._tell_restart_only(config)
            self.config = config
            for door in self.doors:
                door.update(config)
            log.info("settings reloaded")
            self._check_storage()
        self.notifier.ready()

    def _check_storage(self) -> None:
        """Say so at once if the folders went bad (a disk unplugged, a chown): not per file."""
        try:
            check_folders(self.services.store.folders, self.config.min_free_space)
        except StoreSetupError as error:
            log.error("%s", error)

    def _open_connections(self) -> int:
        return sum(len(door.connections) for door in self.doors)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info(
            "stopping: %s open; interrupted files stay resumable",
            counted(self._open_connections(), "connection"),
        )
        # All told first, then waited for: the connections of every door end together.
        for door in self.doors:
            door.stop()
        for door in self.doors:
            door.wait()
        log.info("stopped after %s", self.services.stats.status_line())


def open_doors(config: ReceiverConfig, services: Services) -> list[AnyDoor]:
    """The doors the settings ask for, listening: the scanxfer door, then any other."""
    doors: list[AnyDoor] = [ProtocolDoor(config, services)]
    try:
        if config.legacy_listen is not None:
            doors.append(
                PrototypeDoor(
                    config,
                    services.store,
                    services.stats,
                    services.stopping,
                    services.after_store,
                    services.reservations,
                )
            )
    except BaseException:
        for door in doors:
            door.listener.close()
        raise
    return doors
