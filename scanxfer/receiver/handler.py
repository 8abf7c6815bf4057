"""One connection from accept to close: TLS, the handshake, then the files.

Before the handshake completes a peer can only send HELLO and AUTHENTICATE: the state
machine refuses anything else, so a stranger never reaches a file header.  Two clocks
bound what a peer can hold: the whole handshake must finish within handshake_timeout,
and afterwards the connection must make progress (a complete frame, or another 64 KiB of
payload) at least every idle_timeout, so trickling a byte now and then does not keep it.
Only a sender whose key is proven takes one of the max_connections slots (`settle`); before
that its door may drop it to make room for newer handshakes (`doors.HandshakeBudget`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

from .. import cipher
from .. import protocol as p
from ..config import ReceiverConfig
from ..protocol import auth
from ..tls_channel import TLSChannel
from .intake import Intake
from .shared import SenderKey, Services, shut

log = logging.getLogger("scanxfer.receiver")

RECV_BUFFER = 1 << 20
# Payload bytes that count as progress for idle_timeout: far below any real link's rate.
PROGRESS_BYTES = 1 << 16
_TLS_RECORD_TYPE = 0x16  # the first byte of a TLS ClientHello


class ConnectionHandler:
    """Drive one sender's connection from handshake to close."""

    def __init__(
        self,
        sock: socket.socket,
        host: str,
        peer: str,
        config: ReceiverConfig,
        services: Services,
        settle: Callable[[ConnectionHandler], bool],
    ) -> None:
        # host: the address failures are counted against; peer: host:port, for the log.
        self.sock: socket.socket | TLSChannel = sock  # what the protocol talks through
        self.plain_socket = sock  # what another thread shuts to end a blocking read
        self.host, self.address, self.peer = host, peer, peer
        self.config, self.services = config, services
        # Asks the door for a max_connections slot once the key is proven (doors.Door.settle).
        self._settle = settle
        self.settled = False
        self.conn = p.Connection(p.Role.RECEIVER, window=config.window)
        self.aborted = threading.Event()
        # Why the key it proved stopped counting (revoked, replaced), once an OFFER found so.
        self.retired: str | None = None
        self.outbox = bytearray()
        self.hello: p.Hello | None = None
        self.nonce = auth.new_nonce()
        self.name: str | None = None  # set once authenticated
        self.key: auth.Verifier | None = None  # the key it authenticated with, set after name
        self.sender: SenderKey | None = None
        self.intake: Intake | None = None
        self.deadline = time.monotonic() + config.handshake_timeout
        self.payload_since_progress = 0
        self.first_byte: int | None = None

    def run(self) -> None:
        try:
            if self._secure():
                self._serve()
        except p.RemoteProtocolError as error:
            self._protocol_error(error)
        except TimeoutError:
            if self.name is None:
                self._refused("handshake not completed in time")
            else:
                log.warning("%s: no progress for too long, closing", self.peer)
            self._send_error(p.ErrorCode.TIMEOUT, "timed out")
        except OSError as error:
            log.info("%s: connection lost: %s", self.peer, error)
        except Exception:
            # A bug must cost one connection, never the daemon and its other senders.
            log.exception("%s: internal error, closing the connection", self.peer)
            self._send_error(p.ErrorCode.INTERNAL_ERROR, "internal error on the receiver")
        finally:
            self._close()

    def abort(self) -> None:
        """End this connection from another thread: its recv ends, and `run` cleans up."""
        self.aborted.set()
        shut(self.plain_socket)

    def stop(self) -> None:
        """The receiver is stopping: end the blocking recv, but not the way out.

        The handler then says SHUTTING_DOWN to its sender and keeps its partials for resume.
        """
        shut(self.plain_socket, socket.SHUT_RD)

    def reconfigure(self, config: ReceiverConfig) -> None:
        # Before the handshake: the intake it makes takes these settings; after: its limits.
        self.config = config
        if self.intake is not None:
            self.intake.reconfigure(config)

    def _close(self) -> None:
        if self.intake is not None:
            self.intake.finish()
        if self.sender is not None:
            self.services.registry.release(self.sender, self)
        self.sock.close()

    def _secure(self) -> bool:
        """The TLS handshake, within the handshake deadline; False if it failed."""
        wrapped = self.services.gate.wrap(self.plain_socket)
        if not isinstance(wrapped, TLSChannel):
            return True
        self.sock = wrapped
        try:
            self._arm_timer()
            wrapped.do_handshake()
        except TimeoutError:
            # Answering with an ERROR frame would need the handshake that did not happen.
            self._refused("handshake not completed in time (TLS)")
            return False
        except (ssl.SSLError, ConnectionError) as error:
            reason = getattr(error, "reason", None) or error
            self._refused(
                f"no TLS handshake ({reason}); a sender needs tls: true, or tls: false on "
                f"both sides",
            )
            return False
        suite, version, _ = wrapped.cipher() or ("?", "?", 0)
        log.debug("%s: %s, %s", self.peer, version, cipher.describe(suite))
        return True

    def _serve(self) -> None:
        buffer = bytearray(RECV_BUFFER)
        view = memoryview(buffer)
        while True:
            self._arm_timer()
            # All that has arrived (decrypted, with TLS), so that a 1 GiB scan takes about
            # a thousand passes of the parser, the write and the hash, not one per record.
            count = self.sock.recv_into(buffer)
            if self.first_byte is None and count:
                self.first_byte = buffer[0]
            if count == 0 and self.aborted.is_set():
                return
            if count == 0 and self.services.stopping.is_set():
                self._send_error(p.ErrorCode.SHUTTING_DOWN, "receiver is shutting down")
                return
            self.conn.receive_data(view[:count])
            finished = self._handle_events()
            if self.intake is not None:
                self.intake.acknowledge_placed()
            if self.retired is not None:
                # What a handshake with that key is told now; the reason is in the log only.
                self._send_error(p.ErrorCode.AUTH_FAILED, "authentication failed")
                return
            if self.outbox:
                self.sock.sendall(self.outbox)
                self.outbox.clear()
            if finished:
                return

    def _arm_timer(self) -> None:
        """Let the next blocking call wait only until the current deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)

    def _progressed(self) -> None:
        if self.name is not None:
            self.deadline = time.monotonic() + self.config.idle_timeout
            self.payload_since_progress = 0

    def _handle_events(self) -> bool:
        """Process what has arrived; True when the connection is over."""
        while (event := self.conn.next_event()) is not p.NEED_DATA:
            if isinstance(event, p.DataChunk):
                assert self.intake is not None  # the state machine allows DATA only when open
                self.intake.on_chunk(event.data)
                self.payload_since_progress += len(event.data)
                if self.payload_since_progress >= PROGRESS_BYTES:
                    self._progressed()
                continue
            self._progressed()
            if self._on_event(event):
                return True
        return False

    def _on_event(self, event: p.Event) -> bool:
        """Handle one frame; True when the connection is over."""
        if isinstance(event, p.Offer) and self._key_retired(event):
            return True
        if self.intake is not None and self.intake.on_event(event):
            return False  # a file's frame: the intake's business
        match event:
            case p.Hello():
                return self._on_hello(event)
            case p.Authenticate():
                return self._on_authenticate(event)
            case p.Bye() | p.ConnectionClosed():
                return True
            case p.Error():
                log.warning("%s: sender reported %s: %s", self.peer, event.code.name, event.message)
                return True
        return False

    def _key_retired(self, offer: p.Offer) -> bool:
        """Whether the key this connection proved was revoked or replaced since.

        Asked at every OFFER, so that nothing offered after `keys revoke` has returned is
        stored: the door's check ends a connection only at its next tick, within a second.
        Cheap: the keyring stats keys.json and reads it only when it changed.
        """
        assert self.name is not None and self.key is not None  # OFFER comes after WELCOME
        keyring = self.services.gate.keyring
        keyring.refresh()
        reason = keyring.retired(self.name, self.key)
        if reason is not None:
            log.warning(
                "%s: %s; refused its offer of %r and closing the connection",
                self.peer,
                reason,
                offer.path,
            )
            self.retired = reason
        return reason is not None

    def _refused(self, reason: str) -> None:
        if self.aborted.is_set():
            return  # dropped by this receiver (see abort): no failure of the peer's
        self.services.gate.refused(self.address, self.host, reason)

    def _reply(self, event: p.Event) -> None:
        self.outbox += self.conn.send(event)

    def _send_error(self, code: p.ErrorCode, message: str) -> None:
        with contextlib.suppress(OSError, ValueError, p.LocalProtocolError):
            self.sock.sendall(bytes(self.outbox) + self.conn.send(p.Error(code, message)))

    def _protocol_error(self, error: p.RemoteProtocolError) -> None:
        if self.name is None:
            hint = ""
            if self.first_byte == _TLS_RECORD_TYPE and self.services.gate.context is None:
                hint = " (a TLS client: this receiver has tls: false, so the sender needs it too)"
            self._refused(f"not a scanxfer handshake: {error}{hint}")
        elif isinstance(error, p.FrameAuthError):
            log.error(
                "%s: %s; closing the connection, and no byte that failed is stored. Someone on "
                "the network may be tampering with it (use tls: true), or the link corrupts "
                "data",
                self.peer,
                error,
            )
        else:
            log.warning("%s: protocol error, closing: %s", self.peer, error)
        self._send_error(error.code, str(error))

    @property
    def plain(self) -> bool:
        """tls: false: every frame after the handshake then carries a tag of its own."""
        return self.services.gate.context is None

    def _on_hello(self, hello: p.Hello) -> bool:
        version = p.negotiate(hello)
        if version is None:
            spoken = f"{hello.min_version}..{hello.max_version}"
            message = f"no shared protocol version (sender speaks {spoken})"
            log.warning("%s: %s", self.peer, message)
            self._reply(p.Error(p.ErrorCode.UNSUPPORTED_VERSION, message))
            return True
        if self.plain and not p.asks_frame_auth(hello):
            # Without TLS its frames would go unauthenticated: anyone on the path could
            # alter an OFFER or inject a file under its name.
            self._refused(
                f"sender {hello.name!r} cannot authenticate its frames, which this receiver "
                "requires with tls: false: upgrade scanxfer on the sender (or use TLS)"
            )
            message = (
                "this receiver has tls: false and takes only senders that authenticate every "
                "frame: upgrade scanxfer on this sender"
            )
            self._reply(p.Error(p.ErrorCode.UNSUPPORTED_VERSION, message))
            return True
        self.hello = hello
        self._reply(p.Challenge(version, self.nonce))
        return False

    def _on_authenticate(self, answer: p.Authenticate) -> bool:
        hello = self.hello
        assert hello is not None and self.conn.version is not None  # the order is enforced
        gate = self.services.gate
        signed = auth.transcript(
            self.conn.version, hello.name, self.nonce, answer.nonce, gate.channel
        )
        verdict = gate.check(hello.name, signed, answer.proof)
        if verdict.record is None:
            self._refused(verdict.reason)
            self._reply(p.Error(p.ErrorCode.AUTH_FAILED, "authentication failed"))
            return True
        if not self._settle(self):
            log.warning(
                "%s: refused after its handshake: max_connections (%d) senders are connected "
                "already",
                self.peer,
                self.config.max_connections,
            )
            message = "too many connections, retry later"
            self._reply(p.Error(p.ErrorCode.TOO_MANY_CONNECTIONS, message))
            return True
        proof = auth.server_proof(verdict.record, signed)
        if self.plain:
            self.conn.use_frame_key(verdict.record.server_key)
        options = p.welcome_options(hello, authenticate_frames=self.plain)
        self._reply(
            p.Welcome(self.config.name, self.config.window, proof, self.conn.version, options)
        )
        self._admit(hello, verdict.record)
        return False

    def _admit(self, hello: p.Hello, key: auth.Verifier) -> None:
        self.name = hello.name
        self.peer = f"{self.address} ({hello.name})"
        self.key = key  # the door ends the connection when this key is revoked or replaced
        self.services.gate.seen.saw(hello.name, self.host)
        self._progressed()
        log.info("%s: sender %r connected", self.address, hello.name)
        self.intake = Intake(
            self.peer,
            hello.name,
            self.config,
            self.services,
            self._reply,
            ask_digests=self.conn.can_ask_digest,
        )
        instance = hello.options.get(p.INSTANCE_OPTION)
        if instance:
            self.sender = (hello.name, instance)
            self.services.registry.claim(self.sender, self)
