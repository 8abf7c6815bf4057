"""The state tables in code (scanxfer/protocol/states.py) against docs/protocol.md §3 and §5.

The specification and the implementation each hold the tables once; these tests read the
Markdown tables and demand the same rows, both ways, so neither can change alone.  Then they
check that `Connection` refuses every frame the tables have no row for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scanxfer import protocol as p
from scanxfer.protocol.states import (
    CONNECTION_TRANSITIONS,
    FILE_TRANSITIONS,
    SENDS,
    ConnPhase,
    FileEvent,
    FileState,
    file_event,
)
from tests.unit.test_protocol import CANCEL, drain, open_pair

# Both extensions, so that every row of the file table can be reached.
EXTENSIONS = {**CANCEL, p.ASK_DIGEST_OPTION: p.ASK_DIGEST_ON}

SPEC = Path(__file__).parents[2] / "docs" / "protocol.md"
ROLE_WORDS = {
    "sender": {p.Role.SENDER},
    "receiver": {p.Role.RECEIVER},
    "either side": set(p.Role),
}


def section(heading: str) -> str:
    """The section whose heading line starts with `heading`, up to the next one of its level."""
    text = SPEC.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}") + 1
    level = len(heading) - len(heading.lstrip("#"))
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, start + 1)
    return text[start : end.start() if end else len(text)]


def table_rows(text: str) -> list[list[str]]:
    """The cells of a Markdown table's body rows (the header and the rule skipped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def senders_by_heading() -> dict[p.FrameType, set[p.Role]]:
    """Who sends each frame, from the §3 headings ("### 3.7 OFFER (0x10), sent by the sender")."""
    heading = re.compile(r"^### 3\.\w+ (\w+) \(0x(\w\w)\), sent by (?:the )?(.+)$", re.MULTILINE)
    senders = {}
    for name, code, who in heading.findall(section("## 3. Frames")):
        frame = p.FrameType[name]
        assert frame.value == int(code, 16), f"§3 gives {name} the code 0x{code}"
        senders[frame] = ROLE_WORDS[who]
    return senders


@dataclass(frozen=True)
class Cell:
    """An event cell: the words, and the roles its "(sender)" note names, if any."""

    words: str
    roles: set[p.Role] | None


def event_cell(text: str) -> Cell:
    note = re.fullmatch(r"(.*?)\s*\((sender|receiver|either side)[^)]*\)", text)
    if note is None:
        return Cell(text, None)
    return Cell(note[1], ROLE_WORDS[note[2]])


def frames_named(words: str) -> list[p.FrameType] | None:
    """The frames a cell lists ("OFFER, READY, DATA"), or None for prose ("any other frame")."""
    names = [name.strip() for name in words.split(",")]
    if all(name in p.FrameType.__members__ for name in names):
        return [p.FrameType[name] for name in names]
    return None


PHASE_GROUPS = {
    "any": list(ConnPhase),
    "HANDSHAKE (any step)": [phase for phase in ConnPhase if phase.state is p.ConnState.HANDSHAKE],
}


def documented_connection_table() -> tuple[
    dict[tuple[ConnPhase, p.FrameType, p.Role], ConnPhase],
    set[tuple[ConnPhase, p.FrameType]],
]:
    """§5.1 as transitions, and the (phase, frame) pairs it names as protocol errors.

    Rows whose frames are prose ("any other frame", "EOF") add no transition; that they add
    none is the point, and the exact comparison with the code checks it.
    """
    senders = senders_by_heading()
    transitions: dict[tuple[ConnPhase, p.FrameType, p.Role], ConnPhase] = {}
    refused: set[tuple[ConnPhase, p.FrameType]] = set()
    for state, event, after, _ in table_rows(section("### 5.1 Connection")):
        phases = PHASE_GROUPS.get(state) or [ConnPhase(state)]
        cell = event_cell(event)
        frames = frames_named(cell.words)
        if after == "protocol error":
            refused |= {(phase, frame) for phase in phases for frame in frames or []}
            continue
        if after == "(transport ends)":
            assert frames is None, f"§5.1: {event} is not a frame, it ends the transport"
            continue
        assert frames is not None, f"§5.1: a transition needs its frames named, not {event!r}"
        for frame in frames:
            roles = cell.roles or senders[frame]
            assert roles == senders[frame], f"§5.1 and §3 disagree on who sends {frame.name}"
            for phase in phases:
                transitions |= {(phase, frame, role): ConnPhase(after) for role in roles}
    return transitions, refused


def file_state(text: str) -> FileState | None:
    return None if text in ("—", "done") else FileState[text]


def file_events(words: str) -> list[FileEvent]:
    """ "ACK STORED / KEPT_BESIDE / DUPLICATE" is three events: ACK with each outcome."""
    first, *more = words.split(" / ")
    prefix = first.split(" ")[0]
    return [FileEvent(first), *(FileEvent(f"{prefix} {rest}") for rest in more)]


def documented_file_table() -> dict[tuple[FileState | None, FileEvent, p.Role], FileState | None]:
    senders = senders_by_heading()
    transitions = {}
    for state, event, after, _ in table_rows(section("### 5.2 File")):
        cell = event_cell(event)
        frame_name = cell.words.split(" ")[0]
        roles = cell.roles or senders[p.FrameType[frame_name]]
        assert len(roles) == 1, f"§5.2: {event} must have one sender"
        for step in file_events(cell.words):
            transitions[(file_state(state), step, *roles)] = file_state(after)
    return transitions


def test_the_connection_table_is_the_one_in_the_spec() -> None:
    documented, refused = documented_connection_table()
    assert dict(CONNECTION_TRANSITIONS) == documented
    assert not {(phase, frame) for phase, frame, _ in CONNECTION_TRANSITIONS} & refused


def test_the_file_table_is_the_one_in_the_spec() -> None:
    assert dict(FILE_TRANSITIONS) == documented_file_table()


def test_each_frame_is_sent_by_the_side_the_spec_names() -> None:
    senders = senders_by_heading()
    assert set(senders) == set(p.FrameType)
    for frame, roles in senders.items():
        assert {role for role in p.Role if frame in SENDS[role]} == roles, frame.name


def test_every_state_and_event_has_a_row() -> None:
    assert {state for state, _, _ in FILE_TRANSITIONS} == {None, *FileState}
    assert {event for _, event, _ in FILE_TRANSITIONS} == set(FileEvent)
    assert {phase for phase, _, _ in CONNECTION_TRANSITIONS} == set(ConnPhase)


# -- the connection consults the tables --------------------------------------------------------

SIZE = 3
SAMPLES: dict[p.FrameType, p.Event] = {
    p.FrameType.HELLO: p.Hello("h", options=EXTENSIONS),
    p.FrameType.CHALLENGE: p.Challenge(p.PROTOCOL_VERSION, b"r" * p.NONCE_SIZE),
    p.FrameType.AUTHENTICATE: p.Authenticate(b"s" * p.NONCE_SIZE, b"p" * p.PROOF_SIZE),
    p.FrameType.WELCOME: p.Welcome("pi", 8, b"w" * p.PROOF_SIZE, options=EXTENSIONS),
    p.FrameType.BYE: p.Bye(),
    p.FrameType.ERROR: p.Error(p.ErrorCode.SHUTTING_DOWN, "stop"),
    p.FrameType.OFFER: p.Offer(1, "f.npy", SIZE, 0, p.DEFERRED_DIGEST),
    p.FrameType.READY: p.Ready(1, 0),
    p.FrameType.DATA: p.DataHeader(1, 0, SIZE),
    p.FrameType.DIGEST: p.Digest(1, bytes(range(16))),
    p.FrameType.CANCEL: p.Cancel(1),
    p.FrameType.ASK_DIGEST: p.AskDigest(1),
    p.FrameType.ACK: p.Ack(1, p.Outcome.STORED, "f.npy"),
    p.FrameType.NACK: p.Nack(1, p.NackReason.BUSY, True, "busy"),
}
# A legal way through the connection table: SAMPLES in this order reach each phase in turn.
WALK = [p.FrameType.HELLO, p.FrameType.CHALLENGE, p.FrameType.AUTHENTICATE, p.FrameType.WELCOME]


def sender_of(frame: p.FrameType) -> p.Role:
    return next(role for role in p.Role if frame in SENDS[role])


def walked(steps: list[p.FrameType]) -> dict[p.Role, p.Connection]:
    """Two connected ends after the frames `steps`, each sent by its side and received."""
    ends = {
        p.Role.SENDER: p.Connection(p.Role.SENDER),
        p.Role.RECEIVER: p.Connection(p.Role.RECEIVER),
    }
    for frame in steps:
        sender = sender_of(frame)
        receiver = ends[p.Role.RECEIVER if sender is p.Role.SENDER else p.Role.SENDER]
        receiver.receive_data(ends[sender].send(SAMPLES[frame]))
        assert drain(receiver) == [SAMPLES[frame]]
    return ends


# Each phase, and the frames that lead there.
PHASES = [
    *((phase, WALK[:taken]) for taken, phase in enumerate(ConnPhase) if taken <= len(WALK)),
    (ConnPhase.CLOSED, [*WALK, p.FrameType.BYE]),
]


def refusals(
    ends: dict[p.Role, p.Connection], frame: p.FrameType
) -> Iterator[Callable[[], object]]:
    """Sending `frame` from its side, and receiving it at the other, as two calls to try."""
    sender = sender_of(frame)
    other = p.Role.RECEIVER if sender is p.Role.SENDER else p.Role.SENDER
    yield lambda: ends[sender].send(SAMPLES[frame])
    ends[other].receive_data(p.encode(SAMPLES[frame]))
    yield ends[other].next_event


@pytest.mark.parametrize(("phase", "steps"), PHASES, ids=[phase.name for phase, _ in PHASES])
def test_a_frame_without_a_row_in_the_connection_table_is_refused(
    phase: ConnPhase, steps: list[p.FrameType]
) -> None:
    ends = walked(steps)
    assert ends[p.Role.SENDER].phase is ends[p.Role.RECEIVER].phase is phase
    for frame in p.FrameType:
        if (phase, frame, sender_of(frame)) in CONNECTION_TRANSITIONS:
            continue
        local, remote = refusals(walked(steps), frame)
        with pytest.raises(p.LocalProtocolError):
            local()
        with pytest.raises(p.RemoteProtocolError):
            remote()


def in_state(state: FileState) -> dict[p.Role, p.Connection]:
    """Both ends with file 1 (deferred digest, both extensions negotiated) in `state`;
    STREAMING is only ever seen inside a payload, where no frame can come."""
    sender, receiver = open_pair(options=EXTENSIONS)
    receiver.receive_data(sender.send(SAMPLES[p.FrameType.OFFER]))
    drain(receiver)
    if state is FileState.DIGEST_ASKED:
        sender.receive_data(receiver.send(SAMPLES[p.FrameType.ASK_DIGEST]))
        drain(sender)
    elif state is not FileState.OFFERED:
        sender.receive_data(receiver.send(SAMPLES[p.FrameType.READY]))
        drain(sender)
    if state is FileState.SENT:
        receiver.receive_data(sender.send(SAMPLES[p.FrameType.DATA]) + b"x" * SIZE)
        drain(receiver)
    assert sender.files[1].state is receiver.files[1].state is state
    return {p.Role.SENDER: sender, p.Role.RECEIVER: receiver}


def file_step(frame: p.FrameType) -> FileEvent:
    event = SAMPLES[frame]
    assert isinstance(
        event, p.Offer | p.Ready | p.DataHeader | p.Digest | p.Cancel | p.AskDigest | p.Ack | p.Nack
    )
    return file_event(event)


FILE_FRAMES = [
    p.FrameType.OFFER,
    p.FrameType.READY,
    p.FrameType.DATA,
    p.FrameType.DIGEST,
    p.FrameType.CANCEL,
    p.FrameType.ASK_DIGEST,
    p.FrameType.ACK,
    p.FrameType.NACK,
]
# Every frame about a file, in each state a frame can find it in, that the table has no row for.
MISPLACED = [
    (state, frame)
    for state in (FileState.OFFERED, FileState.DIGEST_ASKED, FileState.READY, FileState.SENT)
    for frame in FILE_FRAMES
    if (state, file_step(frame), sender_of(frame)) not in FILE_TRANSITIONS
]


@pytest.mark.parametrize(
    ("state", "frame"),
    MISPLACED,
    ids=[f"{frame.name}-when-{state.value}" for state, frame in MISPLACED],
)
def test_a_frame_without_a_row_in_the_file_table_is_refused_on_both_ends(
    state: FileState, frame: p.FrameType
) -> None:
    why = "already in flight" if frame is p.FrameType.OFFER else f"while it is {state.value}"
    local, remote = refusals(in_state(state), frame)
    with pytest.raises(p.LocalProtocolError, match=why):
        local()
    with pytest.raises(p.RemoteProtocolError, match=why):
        remote()


def test_the_refusals_above_cover_every_state_a_frame_can_find_a_file_in() -> None:
    assert {state for state, _ in MISPLACED} == {
        FileState.OFFERED,
        FileState.DIGEST_ASKED,
        FileState.READY,
        FileState.SENT,
    }
    assert {frame for _, frame in MISPLACED} >= {p.FrameType.OFFER, p.FrameType.DATA}
