"""In-memory protocol peers that answer the way real ones would, for property tests and fuzzing.

A bare `Connection` fed arbitrary bytes stops at the handshake: nothing past HELLO is legal
until someone answers it.  A `Peer` is a Connection plus the answers a well-behaved other end
gives (CHALLENGE after HELLO, READY after OFFER, DATA or CANCEL after READY, ...), chosen from
the events alone, so the same bytes always get the same answers.  Fed a recorded valid stream,
it walks the whole state machine; fed that stream damaged, it reaches states a fresh Connection
never would.  Either way the rules under test are the same: the peer's bytes produce events or a
RemoteProtocolError, the peer's legal answers never raise LocalProtocolError, and an
unfinished control frame never holds more than one frame's worth of memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from scanxfer import protocol as p
from scanxfer.protocol.frames import FRAME_HEAD

DIGEST = bytes(range(16))
SENDER_NAME = "lab-pc"
RECEIVER_NAME = "pi"
HELLO = p.Hello(
    SENDER_NAME,
    options={
        p.INSTANCE_OPTION: b"instance",
        p.CANCEL_OPTION: p.CANCEL_ON,
        p.ASK_DIGEST_OPTION: p.ASK_DIGEST_ON,
    },
)
AUTHENTICATE = p.Authenticate(b"s" * p.NONCE_SIZE, b"c" * p.PROOF_SIZE)
RECEIVER_NONCE = b"r" * p.NONCE_SIZE
SERVER_PROOF = b"w" * p.PROOF_SIZE
# The size of the largest complete control frame: an unfinished one is always smaller.
BUFFER_BOUND = FRAME_HEAD.size + p.MAX_BODY


class Peer:
    """One end of a connection, driven by the bytes it receives; its answers collect in `output`.

    The sender offers `payloads` (as d/<i>.npy) once the handshake is done, keeps the window
    full, withdraws some (CANCEL, when the receiver echoed the option) and says BYE when every
    file is answered or withdrawn.  The receiver asks for part of each file, asks for the
    digest of some deferred ones first (ASK_DIGEST, when negotiated), refuses or finds some
    already stored, and acknowledges the rest.
    """

    def __init__(self, role: p.Role, payloads: Sequence[bytes] = (), window: int = 4) -> None:
        self.conn = p.Connection(role, window)
        self.role = role
        self.payloads = payloads
        self.output = bytearray()
        self._next_file = 0
        self._hello: p.Hello | None = None  # what a receiver answers in WELCOME
        if role is p.Role.SENDER:
            self._send(HELLO)

    def feed(self, data: bytes) -> list[p.Event]:
        """Hand `data` (b"" for EOF) to the connection; return the events it yields.

        Raises RemoteProtocolError when the bytes break the protocol; anything else escaping
        from here is a bug in the protocol code (or in this peer).
        """
        self.conn.receive_data(data)
        events: list[p.Event] = []
        while (event := self.conn.next_event()) is not p.NEED_DATA:
            events.append(event)
            if isinstance(event, p.ConnectionClosed):
                return events
            self._answer(event)
        # White-box, because nothing public shows it: what is left over is part of one frame.
        assert len(self.conn._input) < BUFFER_BOUND, len(self.conn._input)
        return events

    def take_output(self) -> bytes:
        out = bytes(self.output)
        self.output.clear()
        return out

    def _send(self, event: p.Event) -> None:
        self.output += self.conn.send(event)

    def _answer(self, event: p.Event) -> None:
        if self.conn.state is p.ConnState.CLOSED:
            return
        if self.role is p.Role.SENDER:
            self._answer_as_sender(event)
        else:
            self._answer_as_receiver(event)

    def _answer_as_sender(self, event: p.Event) -> None:
        match event:
            case p.Challenge():
                self._send(AUTHENTICATE)
            case p.Ready():
                self._stream(event)
            case p.AskDigest():
                self._tell_digest(event.file_id)
        if self.conn.state is p.ConnState.OPEN:
            self._offer_or_leave()

    def _tell_digest(self, file_id: int) -> None:
        """The digest asked for before the data; or CANCEL (an odd-sized file "changed")."""
        if self.conn.can_cancel and len(self.payloads[file_id]) % 2 == 1:
            self._send(p.Cancel(file_id))
        else:
            self._send(p.Digest(file_id, DIGEST))

    def _stream(self, ready: p.Ready) -> None:
        """DATA, and the DIGEST of a deferred file; or CANCEL instead of either for some."""
        file_id, offer = ready.file_id, self.conn.files[ready.file_id].offer
        if self.conn.can_cancel and file_id % 7 == 4:
            self._send(p.Cancel(file_id))  # it vanished before it was sent
            return
        self._send(p.DataHeader(file_id, ready.offset, offer.size - ready.offset))
        self.output += self.payloads[file_id][ready.offset :]
        if not self.conn.files[file_id].digest_due:
            return  # it was in the offer, or told when the receiver asked
        if self.conn.can_cancel and file_id % 2 == 1:
            self._send(p.Cancel(file_id))  # it changed while it was sent
        else:
            self._send(p.Digest(file_id, DIGEST))

    def _offer_or_leave(self) -> None:
        while self._next_file < len(self.payloads) and len(self.conn.files) < self.conn.window:
            file_id, self._next_file = self._next_file, self._next_file + 1
            size = len(self.payloads[file_id])
            # One in three offered with a deferred digest, which a DIGEST frame settles later.
            digest = p.DEFERRED_DIGEST if file_id % 3 == 2 else DIGEST
            self._send(p.Offer(file_id, f"d/{file_id}.npy", size, file_id, digest))
        if self._next_file == len(self.payloads) and not self.conn.files:
            self._send(p.Bye())

    def _answer_as_receiver(self, event: p.Event) -> None:
        match event:
            case p.Hello():
                self._hello = event
                version = p.negotiate(event)
                if version is None:
                    self._send(p.Error(p.ErrorCode.UNSUPPORTED_VERSION, "speaks 1..1"))
                else:
                    self._send(p.Challenge(version, RECEIVER_NONCE))
            case p.Authenticate():
                version = self.conn.version
                assert version is not None and self._hello is not None  # CHALLENGE chose it
                options = p.welcome_options(self._hello)
                welcome = p.Welcome(RECEIVER_NAME, self.conn.window, SERVER_PROOF, version, options)
                self._send(welcome)
            case p.Offer() if self._asks_digest(event):
                self._send(p.AskDigest(event.file_id))
            case p.Offer():
                self._send(_first_answer(event))
            case p.DataEnd() if not self.conn.files[event.file_id].digest_due:
                self._conclude(event.file_id)
            case p.Digest() if self.conn.files[event.file_id].state is p.FileState.OFFERED:
                self._send(_first_answer(self.conn.files[event.file_id].offer))  # told early
            case p.Digest():
                self._conclude(event.file_id)

    def _asks_digest(self, offer: p.Offer) -> bool:
        """Some deferred files "may be stored already": their digest first, where negotiated."""
        deferred = offer.digest == p.DEFERRED_DIGEST
        return deferred and self.conn.can_ask_digest and offer.file_id % 6 == 2

    def _conclude(self, file_id: int) -> None:
        """The whole file is in (and its deferred digest, if any): ACK, or NACK one in five."""
        offer = self.conn.files[file_id].offer
        if offer.file_id % 5 == 4:
            reason = p.NackReason.DIGEST_MISMATCH
            self._send(p.Nack(file_id, reason, True, "digest mismatch"))
        else:
            self._send(p.Ack(file_id, p.Outcome.STORED, offer.path))


def _first_answer(offer: p.Offer) -> p.Event:
    """READY (from 0 or from half-way, as after a cut), or an early ACK DUPLICATE or NACK."""
    match offer.file_id % 5:
        case 2:
            return p.Ack(offer.file_id, p.Outcome.DUPLICATE, offer.path)
        case 3:
            return p.Nack(offer.file_id, p.NackReason.BUSY, True, "busy")
        case 1:
            return p.Ready(offer.file_id, offer.size // 2)
        case _:
            return p.Ready(offer.file_id, 0)


def record_exchange(payloads: Sequence[bytes], window: int = 4) -> dict[p.Role, bytes]:
    """Join a sender and a receiver Peer; the bytes each role *received*, by role."""
    sender, receiver = Peer(p.Role.SENDER, payloads), Peer(p.Role.RECEIVER, window=window)
    received = {p.Role.SENDER: bytearray(), p.Role.RECEIVER: bytearray()}
    while sender.output or receiver.output:
        to_receiver, to_sender = sender.take_output(), receiver.take_output()
        received[p.Role.RECEIVER] += to_receiver
        received[p.Role.SENDER] += to_sender
        if to_receiver:
            receiver.feed(to_receiver)
        if to_sender:
            sender.feed(to_sender)
    assert sender.conn.state is receiver.conn.state is p.ConnState.CLOSED
    return {role: bytes(wire) for role, wire in received.items()}


def opening(role: p.Role) -> bytes:
    """What a Peer of `role` receives to get from a fresh connection to OPEN."""
    if role is p.Role.RECEIVER:
        return p.encode(HELLO) + p.encode(AUTHENTICATE)
    challenge = p.Challenge(p.PROTOCOL_VERSION, RECEIVER_NONCE)
    welcome = p.Welcome(RECEIVER_NAME, 4, SERVER_PROOF, options=p.welcome_options(HELLO))
    return p.encode(challenge) + p.encode(welcome)


def pieces(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the positions in `cuts` (out-of-range and repeated ones ignored).

    Never an empty piece: to a Connection, b"" means EOF.
    """
    points = sorted({cut for cut in cuts if 0 < cut < len(data)})
    bounds = zip([0, *points], [*points, len(data)], strict=True)
    return [data[start:end] for start, end in bounds if end > start]


def play(peer: Peer, data: bytes, cuts: Iterable[int] = ()) -> list[p.Event]:
    """Feed `data` to `peer` in pieces, then EOF; every event, or RemoteProtocolError."""
    events: list[p.Event] = []
    for piece in pieces(data, cuts):
        events += peer.feed(piece)
    return events + peer.feed(b"")
