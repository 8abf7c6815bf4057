"""An ALICE-style check of "an ACK means on disk", from the receiver's own system calls.

The receiver runs under ``strace -f -yy -xx`` (see `STRACE_OPTIONS`): every descriptor is printed
with the path or socket behind it and every string byte as ``\\xNN``, so the trace parses without
guessing.  `check_trace` reads it into syscalls, finds the ACK frames in what the receiver wrote to
its TCP sockets (with ``tls: false``, as the frames are then plain), and replays the file system
calls in the order strace saw them.  Every ACK must find, before the syscall that put its first
byte on the wire:

* **data**: its file's bytes durable: an fsync or fdatasync of the file (under any of its names)
  that began after the file's last write ended, or a syncfs (or sync) that did;
* **name**: the link or rename that gave it the stored name, then an fsync of that directory
  (or a syncfs) begun after it; the same for every directory on the way below incoming (one
  there before the trace needs an fsync of its parent at some point), and for incoming and
  its parents if the receiver made them.

Order is what strace observed: a sync counts as begun at the line where strace shows it start
and as done at the line that shows its result, a new name exists from the line where its link,
rename or mkdir starts (another thread may use it from then on) and is durable only through a
sync begun after the result, and an ACK leaves at the line where its send began.  So calls of
different threads compare correctly even when strace splits them into ``<unfinished ...>`` and
``<... resumed>``.  sync_file_range and fadvise only start writeback: they make nothing durable,
and so count for nothing here.  All paths of a test live on one file system, so one syncfs
covers them all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scanxfer import protocol as p
from scanxfer.protocol.frames import FRAME_HEAD

STRACE_OPTIONS = (
    "-f",
    "--seccomp-bpf",  # only the traced calls stop the receiver: the run stays quick
    "-yy",
    "-xx",
    "-s",
    "8192",  # whole frames: the checker refuses a send that strace printed cut short
    "-e",
    "trace=open,openat,creat,write,pwrite64,writev,pwritev,pwritev2,ftruncate,sendfile,"
    "splice,copy_file_range,fsync,fdatasync,syncfs,sync,sync_file_range,rename,renameat,"
    "renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat,sendto,sendmsg",
)

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\) += (.*)$")  # strace pads a resumed result with spaces
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_FD = re.compile(r"^(-?\d+|AT_FDCWD)<(.*)>(\(deleted\))?$")
_FILE_WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate"}
_FILE_SYNCS = {"fsync", "fdatasync"}
_GLOBAL_SYNCS = {"syncfs", "sync"}
_RENAMES = {"link", "linkat", "rename", "renameat", "renameat2"}
_NAMING = {*_RENAMES, "unlink", "unlinkat", "mkdir", "mkdirat"}


class TraceError(Exception):
    """The trace cannot be read with certainty: the check would prove nothing."""


@dataclass(frozen=True)
class Call:
    """One completed system call: where strace showed it begin and end, and its parts."""

    pid: str  # the thread
    name: str
    args: tuple[str, ...]
    result: str
    entry: int  # line index of its start
    exit: int  # line index of its result

    @property
    def failed(self) -> bool:
        return not self.result or self.result[0] in "-?"


@dataclass(frozen=True)
class AckSent:
    ack: p.Ack
    line: int  # where the send carrying its first byte began


@dataclass(frozen=True)
class Violation:
    ack: AckSent
    missing: str

    def __str__(self) -> str:
        ack = self.ack.ack
        return (
            f"ACK #{ack.file_id} {ack.outcome.name} {ack.stored_path!r} "
            f"(sent at trace line {self.ack.line + 1}): {self.missing}"
        )


@dataclass
class Report:
    acks: list[AckSent]
    violations: list[Violation]


def check_trace(trace: Path, incoming: Path) -> Report:
    """Every ACK in the strace output `trace`, and what each lacked before it left."""
    calls = list(parse_calls(trace.read_text(encoding="ascii")))
    acks = find_acks(calls)
    return Report(acks, Replay(incoming).run(calls, acks))


# --- reading the trace ------------------------------------------------------------------------


def parse_calls(text: str) -> Iterator[Call]:
    """The completed calls, an ``<unfinished ...>`` joined to its ``<... resumed>``."""
    pending: dict[str, tuple[str, int]] = {}
    for index, line in enumerate(text.splitlines()):
        match = _LINE.match(line)
        if match is None:
            raise TraceError(f"line {index + 1} has no pid (was strace run with -f?): {line!r}")
        pid, rest = match.groups()
        if rest.startswith(("+++", "---")):
            continue  # exits and signals
        if rest.endswith(_UNFINISHED):
            pending[pid] = (rest.removesuffix(_UNFINISHED), index)
            continue
        entry = index
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            head, entry = pending.pop(pid)
            rest = head + resumed.group(2)
        call = _CALL.match(rest)
        if call is None:
            if rest.endswith("= ?"):
                continue  # the thread ended inside the call: it returned nothing
            raise TraceError(f"line {index + 1} is no system call: {line!r}")
        name, args, result = call.groups()
        yield Call(pid, name, tuple(split_args(args)), result, entry, index)


def split_args(args: str) -> Iterator[str]:
    """Top-level arguments; with -xx and -yy no comma or bracket hides inside a string or path."""
    depth, start = 0, 0
    for at, char in enumerate(args):
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            yield args[start:at].strip()
            start = at + 1
    if args.strip():
        yield args[start:].strip()


def unhex(text: str) -> bytes:
    """The bytes of a -xx string body (``\\x2f\\x74...``)."""
    if len(text) % 4 or not all(text[at : at + 2] == "\\x" for at in range(0, len(text), 4)):
        raise TraceError(f"not a -xx string: {text[:60]!r}")
    return bytes.fromhex(text.replace("\\x", ""))


def string_arg(arg: str) -> bytes:
    if not (arg.startswith('"') and arg.endswith('"')):
        raise TraceError(f"a string cut short or missing (raise strace -s): {arg[:60]!r}")
    return unhex(arg[1:-1])


@dataclass(frozen=True)
class Fd:
    path: str | None  # a file or directory
    socket: str | None  # e.g. TCP:[127.0.0.1:5000->127.0.0.1:4711]


def fd_arg(arg: str) -> Fd:
    match = _FD.match(arg)
    if match is None:
        raise TraceError(f"a descriptor without its path (was strace run with -yy?): {arg!r}")
    inside = match.group(2)
    if inside.startswith("\\x"):
        return Fd(os.fsdecode(unhex(inside)), None)
    return Fd(None, inside)


def path_at(dir_arg: str | None, path_arg: str) -> str:
    """The absolute path a (dirfd, path) pair names."""
    path = os.fsdecode(string_arg(path_arg))
    if path.startswith("/"):
        return os.path.normpath(path)
    if dir_arg is None:
        raise TraceError(f"a path relative to a working directory strace does not show: {path!r}")
    base = fd_arg(dir_arg).path
    if base is None:
        raise TraceError(f"a path relative to a socket: {dir_arg!r}")
    return os.path.normpath(os.path.join(base, path))


# --- the frames the receiver sent -------------------------------------------------------------


def find_acks(calls: list[Call]) -> list[AckSent]:
    """Every ACK written to a TCP socket, with the send its first byte went out in."""
    streams: dict[str, tuple[bytearray, list[tuple[int, int]]]] = {}
    for call in calls:
        sent = socket_bytes(call)
        if sent is None:
            continue
        socket, data = sent
        buffer, starts = streams.setdefault(socket, (bytearray(), []))
        starts.append((len(buffer), call.entry))
        buffer += data
    return [ack for buffer, starts in streams.values() for ack in acks_in(buffer, starts)]


def socket_bytes(call: Call) -> tuple[str, bytes] | None:
    """(socket, bytes that left) of a successful send to a TCP socket; None for anything else."""
    if call.failed or call.name not in {"sendto", "write", "sendmsg", "writev"}:
        return None
    target = fd_arg(call.args[0])
    if target.socket is None or not target.socket.startswith("TCP"):
        return None
    if call.name in {"sendmsg", "writev"}:
        raise TraceError(f"{call.name} to a socket is not decoded here; extend socket_bytes")
    data, count = string_arg(call.args[1]), int(call.result.split()[0])
    if len(data) < count:
        raise TraceError(f"strace printed {len(data)} of {count} bytes sent: raise -s")
    return target.socket, data[:count]


def acks_in(buffer: bytearray, starts: list[tuple[int, int]]) -> Iterator[AckSent]:
    offset = 0
    tag = 0  # a WELCOME that grants frame authentication puts a tag after each later frame
    while offset + FRAME_HEAD.size <= len(buffer):
        kind, length = FRAME_HEAD.unpack_from(buffer, offset)
        body = bytes(buffer[offset + FRAME_HEAD.size : offset + FRAME_HEAD.size + length])
        if len(body) < length:
            raise TraceError("the receiver's stream ends inside a frame")
        if kind == p.FrameType.ACK:
            event = p.decode_body(p.FrameType.ACK, body)
            assert isinstance(event, p.Ack)
            yield AckSent(event, max(line for start, line in starts if start <= offset))
        offset += FRAME_HEAD.size + length + tag
        if kind == p.FrameType.WELCOME:
            welcome = p.decode_body(p.FrameType.WELCOME, body)
            assert isinstance(welcome, p.Welcome)
            tag = p.TAG_SIZE if welcome.options.get(p.FRAME_AUTH_OPTION) == p.FRAME_AUTH_ON else 0


# --- the replay -------------------------------------------------------------------------------


@dataclass
class Replay:
    """The file system as the calls leave it: which inode each path names, and what is durable."""

    incoming: Path
    inode_at: dict[str, int] = field(default_factory=dict)  # live paths
    last_inode_at: dict[str, int] = field(default_factory=dict)  # for "(deleted)" descriptors
    last_write: dict[int, int] = field(default_factory=dict)  # inode -> line of its last write
    data_synced: set[int] = field(default_factory=set)  # inodes durable since their last write
    named_at: dict[str, int] = field(default_factory=dict)  # path -> line it was (re)named
    name_synced: set[str] = field(default_factory=set)  # paths durable since then
    synced_dirs: set[str] = field(default_factory=set)  # ever fsynced, for names made earlier
    global_sync_seen: bool = False
    inodes: int = 0

    def run(self, calls: list[Call], acks: list[AckSent]) -> list[Violation]:
        # An ACK is judged where its send began; a call takes effect where its result shows,
        # but a name may appear as soon as its call begins: other threads can use it then.
        steps: list[tuple[int, int, Call | AckSent]] = [
            (c.entry if c.name in _NAMING else c.exit, 0, c) for c in calls
        ]
        steps += [(ack.line, 1, ack) for ack in acks]
        violations: list[Violation] = []
        for _, _, step in sorted(steps, key=lambda s: (s[0], s[1])):
            if isinstance(step, AckSent):
                violations += self.judge(step)
            elif not step.failed:
                self.apply(step)
        return violations

    def apply(self, call: Call) -> None:
        name, args = call.name, call.args
        if name in {"open", "openat", "creat"}:
            self.opened(call)
        elif name in _FILE_WRITES:
            self.wrote(fd_arg(args[0]).path, call.exit)
        elif name in {"sendfile", "splice", "copy_file_range"}:
            self.wrote(fd_arg(args[0 if name == "sendfile" else 2]).path, call.exit)
        elif name in _FILE_SYNCS:
            self.synced(fd_arg(args[0]).path, call.entry)
        elif name in _GLOBAL_SYNCS:
            self.synced_all(call.entry)
        elif name in _RENAMES:
            self.renamed(call)
        elif name in {"unlink", "unlinkat"}:
            self.removed(self.at(args, 0))
        elif name in {"mkdir", "mkdirat"}:
            self.new_name(self.at(args, 0), self.new_inode(), call.exit)

    @staticmethod
    def at(args: tuple[str, ...], index: int) -> str:
        """The path of an (optional dirfd, path) pair starting at `index`."""
        if args[index].startswith('"'):
            return path_at(None, args[index])
        return path_at(args[index], args[index + 1])

    def new_inode(self) -> int:
        self.inodes += 1
        return self.inodes

    def inode(self, path: str | None) -> int | None:
        if path is None:
            return None
        return self.inode_at.get(path, self.last_inode_at.get(path))

    def opened(self, call: Call) -> None:
        path = fd_arg(call.result).path
        if path is None:
            return
        flags = call.args[1] if call.name == "open" else call.args[2]
        if path not in self.inode_at:
            self.inode_at[path] = self.new_inode()  # created now, or there before the trace
        if "O_TRUNC" in flags or call.name == "creat":
            self.wrote(path, call.exit)

    def wrote(self, path: str | None, line: int) -> None:
        inode = self.inode(path)
        if inode is not None:
            self.last_write[inode] = line
            self.data_synced.discard(inode)

    def synced(self, path: str | None, began: int) -> None:
        inode = self.inode(path)
        if inode is not None and self.last_write.get(inode, -1) < began:
            self.data_synced.add(inode)
        if path is not None:
            self.synced_dirs.add(path)
            self.name_synced.update(
                name
                for name, line in self.named_at.items()
                if os.path.dirname(name) == path and line < began
            )

    def synced_all(self, began: int) -> None:
        self.global_sync_seen = True
        self.data_synced.update(
            i for i in self.inode_at.values() if self.last_write.get(i, -1) < began
        )
        self.name_synced.update(name for name, line in self.named_at.items() if line < began)

    def renamed(self, call: Call) -> None:
        args = call.args
        source = self.at(args, 0)
        target = self.at(args, 1 if args[0].startswith('"') else 2)
        inode = self.inode_at.get(source)
        if inode is None:
            inode = self.inode_at[source] = self.new_inode()  # there before the trace
        if call.name.startswith("rename"):
            self.removed(source)
        self.new_name(target, inode, call.exit)

    def new_name(self, path: str, inode: int, line: int) -> None:
        self.inode_at[path] = inode
        self.named_at[path] = line
        self.name_synced.discard(path)

    def removed(self, path: str) -> None:
        inode = self.inode_at.pop(path, None)
        if inode is not None:
            self.last_inode_at[path] = inode
        self.named_at.pop(path, None)

    # --- the judgement of one ACK ---

    def judge(self, sent: AckSent) -> list[Violation]:
        stored = str(self.incoming / sent.ack.stored_path)
        inode = self.inode_at.get(stored)
        if inode is None:
            return [Violation(sent, f"nothing is linked at {stored} when it leaves")]
        missing = []
        if inode not in self.data_synced and not (
            inode not in self.last_write and self.global_sync_seen
        ):
            missing.append(
                "missing data sync before ACK: no fsync/fdatasync of the file and no syncfs "
                "after its last write" + self.where(self.last_write.get(inode))
            )
        missing += self.undurable_names(stored)
        return [Violation(sent, text) for text in missing]

    def undurable_names(self, stored: str) -> list[str]:
        """The names the stored file hangs on whose parent was not synced since.

        Its own and its directories' below incoming; above, only those the receiver made
        (incoming itself, at its first start), as the others are none of its business.
        """
        root, missing = str(self.incoming), []
        path = stored
        while path != os.path.dirname(path):
            inside = path.startswith(root + "/")
            if (inside or path in self.named_at) and not self.name_durable(path):
                missing.append(
                    f"missing directory fsync before ACK: {os.path.dirname(path)} was not "
                    f"fsynced (nor syncfs) after {path} got its name"
                    + self.where(self.named_at.get(path))
                )
            path = os.path.dirname(path)
        return missing

    def name_durable(self, path: str) -> bool:
        if path in self.named_at:
            return path in self.name_synced
        # Named before the trace began (a duplicate of an older file): its directory must be
        # synced before an ACK vouches for it.
        return os.path.dirname(path) in self.synced_dirs or self.global_sync_seen

    @staticmethod
    def where(line: int | None) -> str:
        return "" if line is None else f" (trace line {line + 1})"
