"""The accept loop: signals, sd_notify, and one thread per connection."""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from .. import protocol as p
from ..config import ConfigError, ReceiverConfig
from ..systemd import Notifier
from .handler import ConnectionHandler
from .shared import Services, shut

if TYPE_CHECKING:
    from .prototype_door import LegacyDoor

log = logging.getLogger("scanxfer.receiver")

# Settings bound at start (sockets, the store, the certificate); a reload only warns.
RESTART_ONLY = ("listen", "state_dir", "incoming_dir", "partial_dir", "tls", "legacy_listen")
STATUS_SECONDS = 1.0
MAX_REFUSERS = 4  # connections over max_connections being told so at once


class Server:
    """Accept loop, signals, sd_notify; connections run in their own threads."""

    def __init__(
        self,
        config: ReceiverConfig,
        services: Services,
        reload: Callable[[], ReceiverConfig] | None,
    ) -> None:
        self.config, self.services, self.reload = config, services, reload
        self.reload_requested = threading.Event()
        self.notifier = Notifier()
        self.handlers: dict[threading.Thread, ConnectionHandler] = {}
        self.refusers: list[threading.Thread] = []
        self.listener = _listen(config.listen.host, config.listen.port)
        self.legacy = _legacy_door(config, services)
        self._wake_read, self._wake_write = socket.socketpair()

    @property
    def stopping(self) -> threading.Event:
        return self.services.stopping

    def serve_forever(self) -> None:
        self._install_signal_handlers()
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self._wake_read, selectors.EVENT_READ)
        if self.legacy is not None:
            selector.register(self.legacy.listener, selectors.EVENT_READ)
        host, port = self.listener.getsockname()[:2]
        incoming = self.services.store.incoming_dir
        log.info("listening on %s:%d, storing into %s", host, port, incoming)
        self.notifier.ready()
        stats = self.services.stats
        shown = stats.status_line()
        self.notifier.status(shown)
        # At least once a second, so `systemctl status` follows the transfers closely.
        tick = min(self.notifier.watchdog_interval() or STATUS_SECONDS, STATUS_SECONDS)
        while not self.stopping.is_set():
            for key, _ in selector.select(timeout=tick):
                if key.fileobj is self.listener:
                    self._accept()
                elif self.legacy is not None and key.fileobj is self.legacy.listener:
                    self.legacy.accept()
                else:
                    self._wake_read.recv(64)
            if self.reload_requested.is_set():
                self._reload()
            self._reap_threads()
            self._end_revoked()
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
            for key in RESTART_ONLY:
                if getattr(config, key) != getattr(self.config, key):
                    log.warning(
                        "%s changed to %s; restart the receiver to apply it",
                        key,
                        getattr(config, key),
                    )
            self.config = config
            self.services.gate.update(config)
            if self.legacy is not None:
                self.legacy.update(config)
            log.info("settings reloaded")
        self.notifier.ready()

    def _accept(self) -> None:
        sock, address = self.listener.accept()
        peer = f"{address[0]}:{address[1]}"
        if self.services.gate.brake.blocked(address[0]):
            # Too many failed handshakes from there this minute: not even a thread for it.
            sock.close()
            return
        if len(self.handlers) >= self.config.max_connections:
            log.warning(
                "%s: refused, already %d connections (max_connections)", peer, len(self.handlers)
            )
            self._turn_away(sock)
            return
        handler = ConnectionHandler(sock, address[0], peer, self.config, self.services)
        thread = threading.Thread(target=handler.run, name=f"conn {peer}", daemon=True)
        self.handlers[thread] = handler
        thread.start()

    def _turn_away(self, sock: socket.socket) -> None:
        """Tell a connection over max_connections why it is closed, in words it can read.

        Under TLS that takes a TLS handshake, so it runs in a thread; only a few at a time,
        and beyond those the connection is simply closed: a flood must not cost a thread each.
        """
        context = self.services.gate.context
        if context is None:
            _send_refusal(sock)  # a few bytes into a fresh socket: this never blocks
            return
        self.refusers = [thread for thread in self.refusers if thread.is_alive()]
        if len(self.refusers) >= MAX_REFUSERS:
            sock.close()
            return
        secured = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        secured.settimeout(self.config.handshake_timeout)
        thread = threading.Thread(target=_send_refusal, args=(secured,), daemon=True)
        self.refusers.append(thread)
        thread.start()

    def _reap_threads(self) -> None:
        for thread in [t for t in self.handlers if not t.is_alive()]:
            del self.handlers[thread]
        self.services.stats.connections = len(self.handlers)

    def _end_revoked(self) -> None:
        """A revoked key ends its open connections too, not only the next handshake."""
        keyring = self.services.gate.keyring
        if not keyring.refresh():
            return
        active = keyring.active_names()
        for handler in self.handlers.values():
            if handler.name is not None and handler.name not in active:
                log.warning("%s: its key was revoked; closing the connection", handler.peer)
                handler.abort()

    def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info(
            "stopping: %d connections open; interrupted files stay resumable", len(self.handlers)
        )
        self.listener.close()
        if self.legacy is not None:
            self.legacy.close()
        for handler in self.handlers.values():
            # Ends the handler's blocking recv; it then says goodbye and keeps its partials.
            shut(handler.sock, socket.SHUT_RD)
        for thread in list(self.handlers):
            thread.join(timeout=30)
        log.info("stopped after %s", self.services.stats.status_line())


def _send_refusal(sock: socket.socket) -> None:
    """TOO_MANY_CONNECTIONS (after the TLS handshake, on a TLS socket), then close."""
    refusal = p.Error(p.ErrorCode.TOO_MANY_CONNECTIONS, "too many connections, retry later")
    with contextlib.suppress(OSError, ValueError):
        if isinstance(sock, ssl.SSLSocket):
            sock.do_handshake()
        sock.sendall(p.encode(refusal))
    sock.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=64, reuse_port=False)


def _legacy_door(config: ReceiverConfig, services: Services) -> LegacyDoor | None:
    if config.legacy_listen is None:
        return None
    from .prototype_door import LegacyDoor

    return LegacyDoor(config, services.store, services.stats, services.stopping)
