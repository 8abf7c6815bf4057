"""The receiver: accept connections, run the protocol, store files durably.

One thread per connection keeps blocking file I/O (fsync can take a while on an
SD card) from stalling other senders; the main thread only accepts, watches
signals and talks to systemd.  Everything a peer sends goes through
`protocol.Connection`, so a misbehaving peer costs at most its own connection.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from . import protocol as p
from .config import ConfigError, ReceiverConfig
from .sizes import human_size, rate
from .store import (
    BadName,
    Busy,
    DigestMismatch,
    NoSpace,
    PartialFile,
    Store,
    StoredFile,
    StoreError,
    StoreLimits,
    StoreSetupError,
)
from .systemd import Notifier

log = logging.getLogger("scanxfer.receiver")

RECV_BUFFER = 1 << 20
EXIT_OK, EXIT_UNAVAILABLE = 0, 3
# Settings bound at start (the socket, the store); a reload only warns that they changed.
RESTART_ONLY = ("listen", "state_dir", "incoming_dir", "partial_dir")
STATUS_SECONDS = 1.0


@dataclass
class Stats:
    """Counters shown in `systemctl status` (STATUS=) and the exit log line."""

    files: int = 0
    bytes: int = 0
    last_file: str = ""
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stored(self, path: str, size: int) -> None:
        with self.lock:
            self.files += 1
            self.bytes += size
            self.last_file = path

    def status_line(self) -> str:
        with self.lock:
            last = f", last {self.last_file}" if self.last_file else ""
            return (
                f"{self.files} files, {human_size(self.bytes)} received{last}; "
                f"{self.connections} connections"
            )


SenderKey = tuple[str, bytes]  # (name, instance): one sender process


class SenderRegistry:
    """The live connection of each sender process.

    A sender that reconnects has given up on its previous connection, which may
    still look alive here (a stalled link is silent until idle_timeout) and
    would hold its partials busy.  The new connection takes over: the old one
    is shut down and its partials are released for resume.  Processes are told
    apart by the HELLO's instance option, since several may share a host name.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_sender: dict[SenderKey, ConnectionHandler] = {}

    def claim(self, sender: SenderKey, handler: ConnectionHandler) -> None:
        with self._lock:
            previous = self._by_sender.get(sender)
            self._by_sender[sender] = handler
        if previous is not None:
            log.info(
                "%s: sender reconnected; closing its previous connection %s",
                handler.peer,
                previous.peer,
            )
            previous.abort()

    def release(self, sender: SenderKey, handler: ConnectionHandler) -> None:
        with self._lock:
            if self._by_sender.get(sender) is handler:
                del self._by_sender[sender]


@dataclass
class _Incoming:
    """A file between READY and its answer."""

    offer: p.Offer
    partial: PartialFile | None  # None once a write failed: the rest is drained
    resumed_from: int
    started: float = 0.0
    failure: p.Nack | None = None


class ConnectionHandler:
    """Drive one sender's connection from handshake to close."""

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        store: Store,
        config: ReceiverConfig,
        stats: Stats,
        stopping: threading.Event,
        registry: SenderRegistry,
    ) -> None:
        self.sock, self.peer, self.store, self.config = sock, peer, store, config
        self.stats, self.stopping, self.registry = stats, stopping, registry
        self.sender: SenderKey | None = None
        self.aborted = threading.Event()
        self.conn = p.Connection(p.Role.RECEIVER, window=config.window)
        self.files: dict[int, _Incoming] = {}
        self.current: _Incoming | None = None
        self.outbox = bytearray()
        # Placed but not yet acknowledged: their directories are fsynced in one go first.
        self.unsynced: list[tuple[_Incoming, StoredFile]] = []

    def run(self) -> None:
        try:
            self._serve()
        except p.RemoteProtocolError as error:
            log.warning("%s: protocol error, closing: %s", self.peer, error)
            self._send_error(error.code, str(error))
        except TimeoutError:
            log.warning("%s: no data for too long, closing", self.peer)
            self._send_error(p.ErrorCode.TIMEOUT, "timed out")
        except OSError as error:
            log.info("%s: connection lost: %s", self.peer, error)
        except Exception:
            # A bug must cost one connection, never the daemon and its other senders.
            log.exception("%s: internal error, closing the connection", self.peer)
            self._send_error(p.ErrorCode.INTERNAL_ERROR, "internal error on the receiver")
        finally:
            # Files placed but unanswered stay: make them durable, a re-offer finds them.
            with contextlib.suppress(StoreError):
                self.store.sync_placed([stored for _, stored in self.unsynced])
            if self.sender is not None:
                self.registry.release(self.sender, self)
            self._release_partials()
            self.sock.close()

    def abort(self) -> None:
        """End this connection from another thread: its recv ends, and `run` cleans up."""
        self.aborted.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _serve(self) -> None:
        self.sock.settimeout(self.config.handshake_timeout)
        buffer = bytearray(RECV_BUFFER)
        view = memoryview(buffer)
        while True:
            count = self.sock.recv_into(buffer)
            if count == 0 and self.aborted.is_set():
                return
            if count == 0 and self.stopping.is_set():
                self._send_error(p.ErrorCode.SHUTTING_DOWN, "receiver is shutting down")
                return
            self.conn.receive_data(view[:count])
            finished = self._handle_events()
            self._acknowledge_placed()
            if self.outbox:
                self.sock.sendall(self.outbox)
                self.outbox.clear()
            if finished:
                return

    def _handle_events(self) -> bool:
        """Process what has arrived; True when the connection is over."""
        while (event := self.conn.next_event()) is not p.NEED_DATA:
            match event:
                case p.DataChunk():
                    self._on_chunk(event.data)
                case p.Hello():
                    if self._on_hello(event):
                        return True
                case p.Offer():
                    self._on_offer(event)
                case p.DataHeader():
                    self._on_data_header(event)
                case p.DataEnd():
                    self._on_data_end()
                case p.Bye() | p.ConnectionClosed():
                    return True
                case p.Error():
                    log.warning(
                        "%s: sender reported %s: %s", self.peer, event.code.name, event.message
                    )
                    return True
        return False

    def _reply(self, event: p.Event) -> None:
        self.outbox += self.conn.send(event)

    def _send_error(self, code: p.ErrorCode, message: str) -> None:
        with contextlib.suppress(OSError, p.LocalProtocolError):
            self.sock.sendall(bytes(self.outbox) + self.conn.send(p.Error(code, message)))

    def _on_hello(self, hello: p.Hello) -> bool:
        version = p.negotiate(hello)
        if version is None:
            spoken = f"{hello.min_version}..{hello.max_version}"
            message = f"no shared protocol version (sender speaks {spoken})"
            log.warning("%s: %s", self.peer, message)
            self._reply(p.Error(p.ErrorCode.UNSUPPORTED_VERSION, message))
            return True
        self._reply(p.Welcome(self.config.name, self.config.window, version))
        self.sock.settimeout(self.config.idle_timeout)
        log.info("%s: sender %r connected", self.peer, hello.name)
        self.peer = f"{self.peer} ({hello.name})"
        instance = hello.options.get(p.INSTANCE_OPTION)
        if instance:
            self.sender = (hello.name, instance)
            self.registry.claim(self.sender, self)
        return False

    def _on_offer(self, offer: p.Offer) -> None:
        refusal = self._check_offer(offer)
        if refusal is not None:
            log.warning("%s: refused %r: %s", self.peer, offer.path, refusal.message)
            self._reply(refusal)
            return
        try:
            identical = self.store.find_identical(offer.path, offer.size, offer.digest)
            partial = (
                None if identical else self.store.open_partial(offer.path, offer.size, offer.digest)
            )
        except StoreError as error:
            log.warning("%s: refused %r: %s", self.peer, offer.path, error)
            self._reply(_nack(offer.file_id, error))
            return
        if identical is not None:
            log.info(
                "%s: %s is already stored as %s (duplicate)", self.peer, offer.path, identical.path
            )
            self._reply(p.Ack(offer.file_id, p.Outcome.DUPLICATE, identical.path))
            return
        assert partial is not None
        if partial.offset:
            log.info(
                "%s: resuming %s at %d of %d bytes",
                self.peer,
                offer.path,
                partial.offset,
                offer.size,
            )
        self.files[offer.file_id] = _Incoming(offer, partial, partial.offset)
        self._reply(p.Ready(offer.file_id, partial.offset))

    def _check_offer(self, offer: p.Offer) -> p.Nack | None:
        if offer.size > self.config.max_file_size:
            return p.Nack(
                offer.file_id,
                p.NackReason.TOO_LARGE,
                False,
                f"{offer.size} bytes exceeds max_file_size {self.config.max_file_size}",
            )
        try:
            self.store.check_name(offer.path)
        except BadName as error:
            return p.Nack(offer.file_id, p.NackReason.BAD_NAME, False, str(error))
        free = self.store.free_bytes()
        if offer.size > free:
            return p.Nack(
                offer.file_id,
                p.NackReason.NO_SPACE,
                True,
                f"{offer.size} bytes do not fit in {free} free",
            )
        return None

    def _on_data_header(self, header: p.DataHeader) -> None:
        self.current = self.files[header.file_id]
        self.current.started = time.monotonic()

    def _on_chunk(self, data: memoryview) -> None:
        incoming = self.current
        if incoming is None or incoming.partial is None:
            return  # a write already failed: drain the payload, answer at its end
        try:
            incoming.partial.write(data)
        except StoreError as error:
            # The store has dropped the partial; the sender keeps its copy.
            log.error("%s: cannot store %s: %s", self.peer, incoming.offer.path, error)
            incoming.partial = None
            incoming.failure = _nack(incoming.offer.file_id, error)

    def _on_data_end(self) -> None:
        incoming, self.current = self.current, None
        assert incoming is not None  # the protocol guarantees a header before the end
        del self.files[incoming.offer.file_id]
        if incoming.partial is None:
            assert incoming.failure is not None
            self._reply(incoming.failure)
            return
        self._commit(incoming, incoming.partial)

    def _commit(self, incoming: _Incoming, partial: PartialFile) -> None:
        offer = incoming.offer
        try:
            stored = partial.commit(offer.mtime_ns, sync_dir=False)
        except StoreError as error:
            log.error("%s: %s not stored: %s", self.peer, offer.path, error)
            self._reply(_nack(offer.file_id, error))
            return
        self.unsynced.append((incoming, stored))

    def _acknowledge_placed(self) -> None:
        """Group commit: one directory fsync for all files completed in this batch, then ACKs."""
        if not self.unsynced:
            return
        placed, self.unsynced = self.unsynced, []
        failures = self.store.sync_placed([stored for _, stored in placed])
        for incoming, stored in placed:
            error = failures.get(stored.path)
            if error is not None:
                log.error("%s: %s not stored: %s", self.peer, incoming.offer.path, error)
                self._reply(_nack(incoming.offer.file_id, error))
                continue
            outcome = p.Outcome[stored.outcome.name]
            self._reply(p.Ack(incoming.offer.file_id, outcome, stored.path))
            self._log_stored(incoming, stored.path, outcome)

    def _log_stored(self, incoming: _Incoming, path: str, outcome: p.Outcome) -> None:
        offer = incoming.offer
        received = offer.size - incoming.resumed_from
        self.stats.stored(path, received)
        speed = rate(received, time.monotonic() - incoming.started)
        resumed = f", resumed at {incoming.resumed_from}" if incoming.resumed_from else ""
        if outcome is p.Outcome.KEPT_BESIDE:
            log.warning(
                "%s: %s already holds different content; kept the new file beside it as %s",
                self.peer,
                offer.path,
                path,
            )
        elif outcome is p.Outcome.DUPLICATE:
            log.info("%s: %s was stored meanwhile as %s (duplicate)", self.peer, offer.path, path)
        else:
            log.info(
                "%s: received %s (%s, %s%s)",
                self.peer,
                path,
                human_size(offer.size),
                speed,
                resumed,
            )

    def _release_partials(self) -> None:
        """Keep interrupted partials on disk: the sender resumes them next time."""
        for incoming in self.files.values():
            if incoming.partial is not None:
                incoming.partial.release()
        self.files.clear()


def _nack(file_id: int, error: StoreError) -> p.Nack:
    reason = {
        BadName: p.NackReason.BAD_NAME,
        Busy: p.NackReason.BUSY,
        NoSpace: p.NackReason.NO_SPACE,
        DigestMismatch: p.NackReason.DIGEST_MISMATCH,
    }.get(type(error), p.NackReason.IO_ERROR)
    return p.Nack(file_id, reason, reason.retryable, str(error))


class Server:
    """Accept loop, signals, sd_notify; connections run in their own threads."""

    def __init__(
        self, config: ReceiverConfig, store: Store, reload: Callable[[], ReceiverConfig] | None
    ) -> None:
        self.config, self.store, self.reload = config, store, reload
        self.reload_requested = threading.Event()
        self.stats = Stats()
        self.registry = SenderRegistry()
        self.notifier = Notifier()
        self.stopping = threading.Event()
        self.threads: dict[threading.Thread, socket.socket] = {}
        self.listener = socket.create_server(
            (config.listen.host, config.listen.port),
            family=_family(config.listen.host),
            backlog=64,
            reuse_port=False,
        )
        self._wake_read, self._wake_write = socket.socketpair()

    def serve_forever(self) -> None:
        self._install_signal_handlers()
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self._wake_read, selectors.EVENT_READ)
        host, port = self.listener.getsockname()[:2]
        log.info("listening on %s:%d, storing into %s", host, port, self.store.incoming_dir)
        self.notifier.ready()
        shown = self.stats.status_line()
        self.notifier.status(shown)
        # At least once a second, so `systemctl status` follows the transfers closely.
        tick = min(self.notifier.watchdog_interval() or STATUS_SECONDS, STATUS_SECONDS)
        while not self.stopping.is_set():
            for key, _ in selector.select(timeout=tick):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._wake_read.recv(64)
            if self.reload_requested.is_set():
                self._reload()
            self._reap_threads()
            self.notifier.watchdog()
            if (line := self.stats.status_line()) != shown:
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
            log.info("settings reloaded")
        self.notifier.ready()

    def _accept(self) -> None:
        sock, address = self.listener.accept()
        peer = f"{address[0]}:{address[1]}"
        if len(self.threads) >= self.config.max_connections:
            log.warning(
                "%s: refused, already %d connections (max_connections)", peer, len(self.threads)
            )
            refusal = p.Error(p.ErrorCode.TOO_MANY_CONNECTIONS, "too many connections, retry later")
            with contextlib.suppress(OSError):
                sock.sendall(p.encode(refusal))
            sock.close()
            return
        handler = ConnectionHandler(
            sock, peer, self.store, self.config, self.stats, self.stopping, self.registry
        )
        thread = threading.Thread(target=handler.run, name=f"conn {peer}", daemon=True)
        self.threads[thread] = sock
        thread.start()

    def _reap_threads(self) -> None:
        for thread in [t for t in self.threads if not t.is_alive()]:
            del self.threads[thread]
        self.stats.connections = len(self.threads)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info(
            "stopping: %d connections open; interrupted files stay resumable", len(self.threads)
        )
        self.listener.close()
        for sock in self.threads.values():
            # Ends the handler's blocking recv; it then says goodbye and keeps its partials.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
        for thread in list(self.threads):
            thread.join(timeout=30)
        log.info("stopped after %s", self.stats.status_line())


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(config: ReceiverConfig, reload: Callable[[], ReceiverConfig] | None = None) -> int:
    """Run the receiver until SIGTERM/SIGINT; the exit code for `scanxfer receive`.

    `reload` yields fresh settings on SIGHUP (config file and command line again).
    """
    try:
        store = Store(
            config.incoming_dir,
            config.partial_dir,
            StoreLimits(config.max_path_length, config.max_path_depth),
        )
    except (StoreSetupError, OSError) as error:
        log.error("cannot use the storage directories: %s", error)
        return EXIT_UNAVAILABLE
    _clean_leftovers(store, config.partial_max_age)
    try:
        server = Server(config, store, reload)
    except OSError as error:
        log.error(
            "cannot listen on %s:%d: %s (is another receiver running?)",
            config.listen.host,
            config.listen.port,
            error,
        )
        return EXIT_UNAVAILABLE
    server.serve_forever()
    return EXIT_OK


def _clean_leftovers(store: Store, max_age: float) -> None:
    for removed in store.remove_stale_partials(max_age):
        log.warning(
            "removed stale partial of %s (%d of %d bytes, %.0f days old)",
            removed.path,
            removed.held,
            removed.size,
            removed.age_seconds / 86400,
        )
    leftovers = store.leftover_partials()
    if leftovers:
        log.info(
            "%d interrupted files can resume: %s",
            len(leftovers),
            ", ".join(f"{item.path} ({item.held}/{item.size})" for item in leftovers[:10]),
        )
