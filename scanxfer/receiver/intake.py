"""The files of one authenticated connection: offers, payload, durable commit, answers.

Every check on an offer happens here, before a byte of its payload is accepted: the name,
then the size limit and the free space (`admission`).  Payload goes straight from the
receive buffer into the partial file; answers go back through `reply` in the order the
protocol requires, and each file newly stored goes to the after-store hooks.  A file offered
with a deferred digest that may be here already (a stored file of its path and size, or a
whole partial) gets ASK_DIGEST instead of READY where the connection negotiated it, so that
its digest, not its bytes, tells whether anything needs to cross again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import protocol as p
from ..config import ReceiverConfig
from ..sizes import human_size, rate
from ..store import (
    BadName,
    Busy,
    DigestMismatch,
    NoSpace,
    PartialFile,
    StoredFile,
    StoreError,
)
from .admission import Limits, NoRoom, Refusal, Reservation, TooLarge, too_large
from .after_store import ReceivedFile, run_after_store
from .shared import Services

log = logging.getLogger("scanxfer.receiver")


@dataclass
class _Incoming:
    """A file between READY and its answer."""

    offer: p.Offer
    partial: PartialFile | None  # None once a write failed: the rest is drained
    resumed_from: int
    started: float | None = None  # when its DATA began
    failure: p.Nack | None = None
    # The sender's digest: from the offer, or from its DIGEST frame when deferred.
    digest: bytes | None = None
    # Its deferred digest was asked for before any data (ASK_DIGEST), and has not come yet.
    asked: bool = False
    # The free space promised to its bytes still to come (see admission.Reservations).
    reservation: Reservation | None = None

    def settle(self) -> None:
        """The file is done with here: what it was promised is free for other offers."""
        if self.reservation is not None:
            self.reservation.release()


class Intake:
    """Offers, payload and answers of one sender's connection."""

    def __init__(
        self,
        peer: str,
        sender: str,
        config: ReceiverConfig,
        services: Services,
        reply: Callable[[p.Event], None],
        ask_digests: bool = False,
    ) -> None:
        self.peer, self.sender, self.config, self._reply = peer, sender, config, reply
        # The connection negotiated ASK_DIGEST: a file this receiver may hold already is
        # told by its digest before any of its bytes are sent again.
        self.ask_digests = ask_digests
        self.store, self.stats = services.store, services.stats
        self.reservations = services.reservations
        self.limits = Limits.of(config)
        self.after_store = services.after_store
        # With per_sender_dirs each sender's files live under a directory of its name.
        self.prefix = f"{sender}/" if config.per_sender_dirs else ""
        self.files: dict[int, _Incoming] = {}
        self.current: _Incoming | None = None
        # All bytes in and verified: made durable together at the end of the batch.
        self.sealed: list[_Incoming] = []

    def reconfigure(self, config: ReceiverConfig) -> None:
        """Settings reloaded: size and free-space limits apply from the next offer on."""
        self.limits = Limits.of(config)  # one object, swapped whole from the main thread

    def finish(self) -> None:
        """The connection is over: keep partials for resume."""
        # Whole but not yet durable: kept as partials, a re-offer resumes at their end.
        self.files.update((incoming.offer.file_id, incoming) for incoming in self.sealed)
        self.sealed.clear()
        self._release_partials()

    def on_event(self, event: p.Event) -> bool:
        """Take one frame about a file; False if `event` is about the connection instead.

        The protocol state machine has checked its order already: a DATA only for a file
        that is READY, a DIGEST only after a deferred file's payload, and so on.
        """
        match event:
            case p.Offer():
                self.on_offer(event)
            case p.DataHeader():
                self.on_data_header(event)
            case p.DataChunk():
                self.on_chunk(event.data)
            case p.DataEnd():
                self.on_data_end()
            case p.Digest():
                self.on_digest(event)
            case p.Cancel():
                self.on_cancel(event)
            case _:
                return False
        return True

    def on_offer(self, offer: p.Offer) -> None:
        refusal = self._check_offer(offer)
        if refusal is not None:
            log.warning("%s: refused %r: %s", self.peer, offer.path, refusal.message)
            self._reply(refusal)
            return
        try:
            identical, partial = self._open(offer)
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
        if partial.drop_older_versions():
            log.info("%s: dropped the partial of an older version of %s", self.peer, partial.path)
        reservation = self._reserve(offer, partial)
        if reservation is None:
            return
        digest = None if offer.digest == p.DEFERRED_DIGEST else offer.digest
        incoming = _Incoming(offer, partial, partial.offset, digest=digest)
        incoming.reservation = reservation
        self.files[offer.file_id] = incoming
        if digest is None and self.ask_digests and self._may_hold(offer, partial):
            incoming.asked = True
            self._reply(p.AskDigest(offer.file_id))
            return
        self._ready(incoming, partial)

    def _reserve(self, offer: p.Offer, partial: PartialFile) -> Reservation | None:
        """Promise the offer the free space for the bytes it has still to send (a resumed
        partial needs only the rest); None, with the NACK sent and the partial let go, if
        that space is not there."""
        try:
            verdict = self.reservations.admit(
                offer.size, partial.offset, self.limits, self.store.free_bytes
            )
        except OSError as error:
            _let_go(partial)
            log.error(
                "%s: refused %r: cannot read the free space: %s", self.peer, offer.path, error
            )
            message = f"cannot read the receiver's free space: {error}; check its disk"
            reason = p.NackReason.IO_ERROR
            self._reply(p.Nack(offer.file_id, reason, reason.retryable, message))
            return None
        if isinstance(verdict, Reservation):
            return verdict
        _let_go(partial)
        nack = _refused(offer.file_id, verdict)
        log.warning("%s: refused %r: %s", self.peer, offer.path, nack.message)
        self._reply(nack)
        return None

    def _ready(self, incoming: _Incoming, partial: PartialFile) -> None:
        """Ask for the bytes from the offset held."""
        offer = incoming.offer
        if partial.offset:
            log.info(
                "%s: resuming %s at %d of %d bytes",
                self.peer,
                offer.path,
                partial.offset,
                offer.size,
            )
        self._reply(p.Ready(offer.file_id, partial.offset))

    def _may_hold(self, offer: p.Offer, partial: PartialFile) -> bool:
        """Whether the offered file may be here already: its partial complete, or a stored
        file of its size at its path or a clash name.  Only its digest can tell."""
        if partial.offset == offer.size:
            return True
        try:
            return self.store.holds_size(self.prefix + offer.path, offer.size)
        except StoreError:
            return False  # placement reports what is wrong there, as without the question

    def _open(self, offer: p.Offer) -> tuple[StoredFile | None, PartialFile | None]:
        """The stored file identical to the offer, or else the partial to receive it into."""
        path = self.prefix + offer.path
        if offer.digest == p.DEFERRED_DIGEST:
            # No digest yet, so no telling whether it is stored already: placement will.
            return None, self.store.open_deferred(path, offer.size, offer.mtime_ns)
        identical = self.store.find_identical(path, offer.size, offer.digest)
        if identical is not None:
            return identical, None
        return None, self.store.open_partial(path, offer.size, offer.digest)

    def _check_offer(self, offer: p.Offer) -> p.Nack | None:
        try:
            # The sender's own path first, so its error names what the sender sent.
            self.store.check_name(offer.path)
            if self.prefix:
                self.store.check_name(self.prefix + offer.path)
        except BadName as error:
            # Before the free space: a bad name must never get a NACK that invites a retry.
            return p.Nack(offer.file_id, p.NackReason.BAD_NAME, False, str(error))
        # The size alone first, before anything is opened for it; the free space once the
        # partial tells how many bytes are held already (_reserve).
        refusal = too_large(offer.size, self.limits)
        return None if refusal is None else _refused(offer.file_id, refusal)

    def on_data_header(self, header: p.DataHeader) -> None:
        self.current = self.files[header.file_id]
        self.current.started = time.monotonic()

    def on_chunk(self, data: memoryview) -> None:
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
            incoming.settle()
            return
        if incoming.reservation is not None:
            incoming.reservation.arrived(len(data))

    def on_data_end(self) -> None:
        incoming, self.current = self.current, None
        assert incoming is not None  # the protocol guarantees a header before the end
        if incoming.digest is None:
            return  # its DIGEST comes next; on_digest answers it
        del self.files[incoming.offer.file_id]
        self._conclude(incoming)

    def on_digest(self, event: p.Digest) -> None:
        if self.files[event.file_id].asked:
            self._on_early_digest(self.files[event.file_id], event.digest)
            return
        incoming = self.files.pop(event.file_id)
        incoming.digest = event.digest
        if incoming.partial is not None:
            incoming.partial.expect(event.digest)
        self._conclude(incoming)

    def _on_early_digest(self, incoming: _Incoming, digest: bytes) -> None:
        """The digest asked for before any data: a duplicate, a complete partial, or bytes due."""
        offer, partial = incoming.offer, incoming.partial
        assert partial is not None  # nothing was written yet, so nothing failed
        incoming.asked, incoming.digest = False, digest
        try:
            identical = self.store.find_identical(self.prefix + offer.path, offer.size, digest)
        except StoreError as error:
            del self.files[offer.file_id]
            incoming.settle()
            if not partial.release():  # its bytes may still resume on a later offer
                log.info("%s: dropped the partial of an older version of %s", self.peer, offer.path)
            log.warning("%s: refused %r: %s", self.peer, offer.path, error)
            self._reply(_nack(offer.file_id, error))
            return
        if identical is not None:
            self._drop(incoming)
            log.info(
                "%s: %s is already stored as %s (duplicate, told by its digest before any data)",
                self.peer,
                offer.path,
                identical.path,
            )
            self._reply(p.Ack(offer.file_id, p.Outcome.DUPLICATE, identical.path))
            return
        partial.expect(digest)
        if partial.offset == offer.size:
            self._check_complete(incoming, partial)
        else:
            self._ready(incoming, partial)

    def _check_complete(self, incoming: _Incoming, partial: PartialFile) -> None:
        """A partial that holds every byte: checked against the digest now, so that a match
        gets READY at its end (an empty DATA, then the ACK) and a mismatch the whole file."""
        offer = incoming.offer
        try:
            partial.seal(offer.mtime_ns)
        except DigestMismatch:
            # Bytes of another content under this version's key: dropped, the file comes whole.
            log.info(
                "%s: the complete partial of %s does not match its digest; dropped it",
                self.peer,
                offer.path,
            )
            self._reopen(incoming)
            return
        except StoreError as error:
            del self.files[offer.file_id]
            self._refuse(incoming, error)
            return
        log.info("%s: %s is held whole already; its bytes are not needed", self.peer, offer.path)
        self._ready(incoming, partial)

    def _reopen(self, incoming: _Incoming) -> None:
        """A fresh partial for a file whose held bytes were dropped, and READY from 0."""
        offer = incoming.offer
        try:
            partial = self.store.open_deferred(self.prefix + offer.path, offer.size, offer.mtime_ns)
        except StoreError as error:
            del self.files[offer.file_id]
            self._refuse(incoming, error)
            return
        assert incoming.digest is not None  # told before this
        partial.expect(incoming.digest)
        incoming.partial, incoming.resumed_from = partial, partial.offset
        if incoming.reservation is not None:
            incoming.reservation.renew(offer.size - partial.offset)
        self._ready(incoming, partial)

    def _drop(self, incoming: _Incoming) -> None:
        """The file needs no bytes from this sender: it leaves, and so do any it held."""
        del self.files[incoming.offer.file_id]
        incoming.settle()
        if incoming.partial is not None:
            incoming.partial.discard()

    def on_cancel(self, event: p.Cancel) -> None:
        """The sender withdrew the file: what it would send is not the file it offered."""
        incoming = self.files.pop(event.file_id)
        incoming.settle()
        if incoming.partial is not None:
            # Even bytes held from an earlier connection: they belong to a version that is gone.
            incoming.partial.discard()
        # A READY file is withdrawn instead of its DATA, a deferred one after its payload.
        when = "before it was sent" if incoming.started is None else "while being sent"
        log.info(
            "%s: sender withdrew %r: it changed %s; nothing kept",
            self.peer,
            incoming.offer.path,
            when,
        )

    def _conclude(self, incoming: _Incoming) -> None:
        """All of a file is in: answer a failed write, or seal it for the batch's commit."""
        if incoming.partial is None:
            assert incoming.failure is not None
            incoming.settle()
            self._reply(incoming.failure)
            return
        try:
            incoming.partial.seal(incoming.offer.mtime_ns)
        except StoreError as error:
            self._refuse(incoming, error)
            return
        self.sealed.append(incoming)

    def acknowledge_placed(self) -> None:
        """Group commit of the files completed in this batch, then their ACKs: their bytes
        made durable together, each placed, each directory fsynced once."""
        placed = self._place_sealed()
        if not placed:
            return
        failures = self.store.sync_placed([stored for _, stored in placed])
        for incoming, stored in placed:
            error = failures.get(stored.path)
            if error is not None:
                self._refuse(incoming, error)
                continue
            outcome = p.Outcome[stored.outcome.name]
            incoming.settle()
            self._reply(p.Ack(incoming.offer.file_id, outcome, stored.path))
            self._log_stored(incoming, stored.path, outcome)
            if self.after_store and outcome is not p.Outcome.DUPLICATE:
                self._after_store(incoming, stored)

    def _after_store(self, incoming: _Incoming, stored: StoredFile) -> None:
        received = ReceivedFile(
            self.store.incoming_dir / stored.path,
            stored.path,
            stored.size,
            incoming.digest,
            self.sender,
            self.peer,
        )
        run_after_store(self.after_store, received)

    def _place_sealed(self) -> list[tuple[_Incoming, StoredFile]]:
        """Make the sealed files durable and give them their names; refuse the failures."""
        sealed, self.sealed = self.sealed, []
        if not sealed:
            return []
        partials = [incoming.partial for incoming in sealed if incoming.partial is not None]
        try:
            self.store.sync_sealed(partials)
        except StoreError as error:
            for incoming in sealed:
                self._refuse(incoming, error)
            return []
        placed = []
        for incoming, partial in zip(sealed, partials, strict=True):
            try:
                placed.append((incoming, partial.place(sync_dir=False)))
            except StoreError as error:
                self._refuse(incoming, error)
        return placed

    def _refuse(self, incoming: _Incoming, error: StoreError) -> None:
        incoming.settle()
        log.error("%s: %s not stored: %s", self.peer, incoming.offer.path, error)
        self._reply(_nack(incoming.offer.file_id, error))

    def _log_stored(self, incoming: _Incoming, path: str, outcome: p.Outcome) -> None:
        offer = incoming.offer
        received = offer.size - incoming.resumed_from
        self.stats.stored(path, received)
        assert incoming.started is not None  # a placed file had its DATA
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
            incoming.settle()
            partial = incoming.partial
            if partial is not None and not partial.release():
                # A newer version was offered meanwhile, on a connection its sender made
                # before this one noticed that it was gone.
                log.info(
                    "%s: dropped the partial of an older version of %s", self.peer, partial.path
                )
        self.files.clear()


def _let_go(partial: PartialFile) -> None:
    """A partial opened for an offer refused for room: bytes held resume once there is room;
    an empty one is not worth a file."""
    if partial.offset:
        partial.release()
    else:
        partial.discard()


def _refused(file_id: int, refusal: Refusal) -> p.Nack:
    """The NACK for an offer that admission turned down; the sender retries only NO_SPACE."""
    match refusal:
        case TooLarge(size, limit):
            message = f"{size} bytes exceeds max_file_size {limit}"
            return p.Nack(file_id, p.NackReason.TOO_LARGE, False, message)
        case NoRoom(size, free, reserve, promised):
            taken = f"{human_size(promised)} promised to files in flight, " if promised else ""
            message = (
                f"{human_size(size)} do not fit: {human_size(free)} free, of which "
                f"{taken}{human_size(reserve)} stay free (min_free_space)"
            )
            return p.Nack(file_id, p.NackReason.NO_SPACE, True, message)


def _nack(file_id: int, error: StoreError) -> p.Nack:
    reason = {
        BadName: p.NackReason.BAD_NAME,
        Busy: p.NackReason.BUSY,
        NoSpace: p.NackReason.NO_SPACE,
        DigestMismatch: p.NackReason.DIGEST_MISMATCH,
    }.get(type(error), p.NackReason.IO_ERROR)
    return p.Nack(file_id, reason, reason.retryable, str(error))
