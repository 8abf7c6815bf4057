"""A fault-injecting TCP proxy, placed between `scanxfer send` and `scanxfer receive`.

Real networks cut connections at any byte, stall without closing, and (rarely) corrupt data
that TCP's checksum lets through.  None of that can be produced on demand over loopback, so the
tests put this relay in the middle and tell it, connection by connection, what to break.

Offsets in a `Plan` count upstream bytes (sender -> receiver) from the start of that connection;
`drop_downstream_after` counts downstream bytes (receiver -> sender).  Connections are numbered
from 1 in the order the proxy accepts them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CHUNK = 1 << 16


RECEIVE_BUFFER = 256 * 1024


@dataclass(frozen=True)
class Plan:
    """What to break on one connection; the default breaks nothing."""

    cut_after: int | None = None  # close both sides once this many upstream bytes went through
    stall_after: int | None = None  # stop forwarding after this many upstream bytes...
    stall_seconds: float | None = None  # ...for this long (None: until release() or close())
    stall_downstream: bool = True  # hold receiver -> sender bytes too while stalled
    flip_at: int | None = None  # XOR 0xFF the upstream byte at this offset
    drop_downstream_after: int | None = None  # forward this many downstream bytes, discard the rest
    rate: float | None = None  # forward upstream at most this many bytes per second: a slow link
    rate_after: int = 0  # ...but only once this many upstream bytes went through at full speed


CLEAN = Plan()

Plans = Sequence[Plan] | Callable[[int], Plan]


class Link:
    """One relayed connection: its plan, its counters, and events a test can wait on."""

    def __init__(self, number: int, plan: Plan, client: socket.socket) -> None:
        self.number, self.plan = number, plan
        self.upstream = 0  # bytes forwarded sender -> receiver
        self.downstream = 0  # bytes forwarded receiver -> sender
        self.dropped = 0  # receiver -> sender bytes discarded by drop_downstream_after
        self.stalled = threading.Event()
        self.cut = threading.Event()
        self.flipped = threading.Event()
        self.dropping = threading.Event()
        self.closed = threading.Event()
        self._released = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._client = client
        self._server: socket.socket | None = None
        self._lock = threading.Lock()
        self._open_directions = 2
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._slowed: float | None = None  # when the throttled part of the link began

    def start(self, server: socket.socket) -> None:
        self._server = server
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._pump_upstream, daemon=True),
            threading.Thread(target=self._pump_downstream, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def release(self) -> None:
        """End a stall now (or prevent one that has not begun from lasting)."""
        self._released.set()
        self._flowing.set()

    def hold_downstream(self) -> None:
        """Stall what the receiver sends (its answers) now, until `release()`.

        Needs a plan with `stall_downstream`: the downstream pump waits on this gate only then.
        """
        assert self.plan.stall_downstream
        self._flowing.clear()

    def close(self) -> None:
        """Drop both sides at once: each peer sees its connection end."""
        self.closed.set()  # first, so a stall that ends now forwards nothing more
        for sock in (self._client, self._server):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.release()

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _pump_upstream(self) -> None:
        assert self._server is not None
        received = 0
        try:
            while data := bytearray(self._client.recv(CHUNK)):
                start, received = received, received + len(data)
                self._maybe_flip(data, start)
                if self.plan.cut_after is not None and received >= self.plan.cut_after:
                    self._send_upstream(data[: self.plan.cut_after - start])
                    self.cut.set()
                    self.close()
                    return
                stall = self.plan.stall_after
                if stall is not None and start <= stall < received:
                    self._send_upstream(data[: stall - start])
                    if not self._stall():
                        return
                    data = data[stall - start :]
                self._send_upstream(data)
            self._half_close(self._server)
        except OSError:
            self.close()

    def _pump_downstream(self) -> None:
        assert self._server is not None
        try:
            while data := self._server.recv(CHUNK):
                if self.plan.stall_downstream:
                    self._flowing.wait()
                if self.closed.is_set():
                    return
                keep = self._downstream_allowance(len(data))
                if keep < len(data):
                    self.dropped += len(data) - keep
                    self.dropping.set()
                if keep:
                    self._client.sendall(data[:keep])
                    self.downstream += keep
            self._half_close(self._client)
        except OSError:
            self.close()

    def _downstream_allowance(self, size: int) -> int:
        limit = self.plan.drop_downstream_after
        if limit is None:
            return size
        return max(0, min(size, limit - self.downstream - self.dropped))

    def _maybe_flip(self, data: bytearray, start: int) -> None:
        flip = self.plan.flip_at
        if flip is not None and start <= flip < start + len(data):
            data[flip - start] ^= 0xFF
            self.flipped.set()

    def _send_upstream(self, data: bytearray) -> None:
        assert self._server is not None
        if data:
            self._server.sendall(data)
            self.upstream += len(data)
            if self.plan.rate:
                self._throttle(self.plan.rate)

    def _throttle(self, rate: float) -> None:
        """Sleep until the bytes forwarded so far fit the rate since the link slowed down."""
        throttled = self.upstream - self.plan.rate_after
        if throttled <= 0:
            return
        if self._slowed is None:
            crossed = time.monotonic() - throttled / rate  # about when rate_after was reached
            self._slowed = crossed if self.plan.rate_after else self._started
        due = self._slowed + throttled / rate
        self.closed.wait(max(0.0, due - time.monotonic()))

    def _stall(self) -> bool:
        """Hold this connection open and silent, as a dead route or a frozen peer would.

        True when the link lives on after the stall, False when it was closed meanwhile.
        """
        if self.plan.stall_downstream:
            self._flowing.clear()
        self.stalled.set()
        self._released.wait(self.plan.stall_seconds)
        self._flowing.set()
        return not self.closed.is_set()

    def _half_close(self, sink: socket.socket) -> None:
        """Pass an EOF on; the link is over once both directions have ended."""
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            self._open_directions -= 1
            done = self._open_directions == 0
        if done:
            self.close()


class FaultProxy:
    """Listen on 127.0.0.1 (an ephemeral port) and relay each connection to `target_port`.

    `plans` is a list (connection n gets plans[n - 1], later ones pass clean) or a callable
    taking the connection number.  Assign `proxy.plans` to change what later connections get.
    """

    def __init__(self, target_port: int, plans: Plans = (), target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.plans = plans
        self.links: list[Link] = []
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        # A modest receive buffer, as on a real link: with loopback's default (up to 32 MiB)
        # a rate-limited sender would hand off a whole big file at once and never wait.
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        # A timeout lets the accept loop notice close(): closing a socket another thread is
        # blocked on does not wake it.
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connections(self) -> int:
        with self._changed:
            return len(self.links)

    @property
    def upstream_bytes(self) -> int:
        return sum(link.upstream for link in list(self.links))

    @property
    def downstream_bytes(self) -> int:
        return sum(link.downstream for link in list(self.links))

    def link(self, number: int, timeout: float = 60) -> Link:
        """Connection `number` (from 1), waiting up to `timeout` s for it to arrive."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.links) >= number, timeout):
                raise AssertionError(f"the proxy never saw connection {number}")
            return self.links[number - 1]

    def plan_for(self, number: int) -> Plan:
        if callable(self.plans):
            return self.plans(number)
        return self.plans[number - 1] if number <= len(self.plans) else CLEAN

    def release(self) -> None:
        """End every stall in progress."""
        for link in list(self.links):
            link.release()

    def close(self) -> None:
        """Stop accepting and drop every connection; returns once the relay threads are done."""
        self._closing.set()
        self._acceptor.join(5)
        self._listener.close()
        for link in list(self.links):
            link.close()
        for link in list(self.links):
            link.join(5)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self._relay(client)

    def _relay(self, client: socket.socket) -> None:
        with self._changed:
            link = Link(len(self.links) + 1, self.plan_for(len(self.links) + 1), client)
            self.links.append(link)
            self._changed.notify_all()
        try:
            server = socket.create_connection(self.target, timeout=10)
        except OSError:
            link.close()  # receiver down: the sender sees its connection end at once
            return
        if link.closed.is_set():  # close() ran while we were connecting
            server.close()
            return
        server.settimeout(None)
        link.start(server)
