"""The scanxfer door: paired senders speaking the scanxfer protocol, through the gate.

Each accepted connection is a `ConnectionHandler` (TLS, handshake, then the files).  What is
this door's own: an address that keeps failing handshakes is closed at accept (the gate's
brake), a connection over max_connections is told TOO_MANY_CONNECTIONS in words it can
read (at accept, or in place of WELCOME when the slots filled up during its handshake),
and a revoked or replaced key ends the connections open under it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading

from .. import protocol as p
from ..config import ReceiverConfig
from .doors import JOIN_SECONDS, Door
from .handler import ConnectionHandler
from .shared import Services

log = logging.getLogger("scanxfer.receiver")

MAX_REFUSERS = 4  # connections over max_connections being told so at once


class ProtocolDoor(Door[ConnectionHandler]):
    """The receiver's own door, at `listen`."""

    label = "scanxfer door"
    setting = "listen"
    thread_prefix = "conn"

    def __init__(self, config: ReceiverConfig, services: Services) -> None:
        super().__init__(config.listen, config, backlog=64, logger=log)
        self.services = services
        self.refusers: list[threading.Thread] = []

    def screen(self, host: str, peer: str) -> bool:
        # Too many failed handshakes from there this minute: not even a thread for it.
        return not self.services.gate.brake.blocked(host)

    def serve(self, sock: socket.socket, host: str, peer: str) -> ConnectionHandler:
        return ConnectionHandler(sock, host, peer, self.config, self.services, self.settle)

    def turn_away(self, sock: socket.socket, host: str, peer: str, count: int) -> None:
        """Tell a connection over max_connections why it is closed, in words it can read.

        Under TLS that takes a TLS handshake, so it runs in a thread; only a few at a time,
        and beyond those the connection is simply closed: a flood must not cost a thread each.
        """
        log.warning("%s: refused, already %d connections (max_connections)", peer, count)
        context = self.services.gate.context
        if context is None:
            send_refusal(sock)  # a few bytes into a fresh socket: this never blocks
            return
        self.refusers = [thread for thread in self.refusers if thread.is_alive()]
        if len(self.refusers) >= MAX_REFUSERS:
            sock.close()
            return
        secured = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        secured.settimeout(self.config.handshake_timeout)
        thread = threading.Thread(target=send_refusal, args=(secured,), daemon=True)
        self.refusers.append(thread)
        thread.start()

    def update(self, config: ReceiverConfig) -> None:
        super().update(config)
        self.services.gate.update(config)

    def tick(self) -> None:
        super().tick()
        self._end_revoked()
        self._note_seen()

    def wait(self, timeout: float = JOIN_SECONDS) -> None:
        super().wait(timeout)
        self.services.gate.seen.flush(force=True)  # the sightings since the last write

    def _end_revoked(self) -> None:
        """A revoked or replaced key ends its open connections too, not only the next handshake.

        Checked at every tick, not only when keys.json changes: a handshake may have read the
        file just before a change and be admitted just after the round that noticed it.
        """
        keyring = self.services.gate.keyring
        keyring.refresh()
        for handler in self.connections:
            if handler.name is None or handler.key is None or handler.aborted.is_set():
                continue
            if handler.retired is not None:
                continue  # its own check at an OFFER found it, and is closing it
            reason = keyring.retired(handler.name, handler.key)
            if reason is not None:
                log.warning("%s: %s; closing the connection", handler.peer, reason)
                handler.abort()

    def _note_seen(self) -> None:
        """A sender connected for hours is seen now, not only when it connected."""
        seen = self.services.gate.seen
        for handler in self.connections:
            if handler.name is not None and not handler.aborted.is_set():
                seen.saw(handler.name, handler.host)
        seen.flush()


def send_refusal(sock: socket.socket) -> None:
    """TOO_MANY_CONNECTIONS (after the TLS handshake, on a TLS socket), then close."""
    refusal = p.Error(p.ErrorCode.TOO_MANY_CONNECTIONS, "too many connections, retry later")
    with contextlib.suppress(OSError, ValueError):
        if isinstance(sock, ssl.SSLSocket):
            sock.do_handshake()
        sock.sendall(p.encode(refusal))
    sock.close()
