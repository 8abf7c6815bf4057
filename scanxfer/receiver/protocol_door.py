"""The scanxfer door: paired senders speaking the scanxfer protocol, through the gate.

Each accepted connection is a `ConnectionHandler` (TLS, handshake, then the files).  What is
this door's own: an address that keeps failing handshakes is closed at accept (the gate's
brake), a connection over max_connections is told TOO_MANY_CONNECTIONS in words it can
read (at accept, or in place of WELCOME when the slots filled up during its handshake),
and a revoked key ends the connections open under it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading

from .. import protocol as p
from ..config import ReceiverConfig
from .doors import Door
from .handler import ConnectionHandler
from .shared import Services

log = logging.getLogger("scanxfer.receiver")

MAX_REFUSERS = 4  # connections over max_connections being told so at once


class ProtocolDoor(Door[ConnectionHandler]):
    """The receiver's own door, at `listen`."""

    label = "scanxfer door"
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

    def _end_revoked(self) -> None:
        """A revoked key ends its open connections too, not only the next handshake."""
        keyring = self.services.gate.keyring
        if not keyring.refresh():
            return
        active = keyring.active_names()
        for handler in self.connections:
            if handler.name is not None and handler.name not in active:
                log.warning("%s: its key was revoked; closing the connection", handler.peer)
                handler.abort()


def send_refusal(sock: socket.socket) -> None:
    """TOO_MANY_CONNECTIONS (after the TLS handshake, on a TLS socket), then close."""
    refusal = p.Error(p.ErrorCode.TOO_MANY_CONNECTIONS, "too many connections, retry later")
    with contextlib.suppress(OSError, ValueError):
        if isinstance(sock, ssl.SSLSocket):
            sock.do_handshake()
        sock.sendall(p.encode(refusal))
    sock.close()
