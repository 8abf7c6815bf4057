"""The after-store hook: where a post-receive action or a forwarder attaches.

A hook is any callable taking a `ReceivedFile`.  Both doors call the registered hooks once
for each file they have newly stored, after it is durable (fsynced, under its final name,
its directory fsynced): from that moment the receiver has promised the sender the file,
so a hook may read, copy or forward it, but it cannot un-store it.  A hook that raises is
logged and the file stays stored and acknowledged.  Duplicates (nothing new stored) are
not reported.

Hooks run in the connection's own thread, before its ACK goes out and before it reads on:
a hook that takes long (an upload, say) should hand the file to a queue and a thread of its
own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("scanxfer.receiver")


@dataclass(frozen=True)
class ReceivedFile:
    """A file just stored durably, as a hook sees it."""

    path: Path  # where it is now: the incoming directory joined with `name`
    name: str  # posix path relative to the incoming directory, as stored (maybe a clash name)
    size: int
    digest: bytes | None  # xxh3-128 the sender announced and the store checked; None if none
    sender: str | None  # the sender's key name; None on the prototype door, which has none
    peer: str  # the connection it came over, for log lines


AfterStore = Callable[[ReceivedFile], None]


def run_after_store(hooks: Sequence[AfterStore], received: ReceivedFile) -> None:
    """Call each hook in turn; one that fails is logged and does not stop the others."""
    for hook in hooks:
        try:
            hook(received)
        except Exception:
            # The file is stored and answered for: a hook's bug must not cost it, or the
            # connection that brought it.
            log.exception(
                "%s: after-store hook %s failed on %s; the file stays stored",
                received.peer,
                getattr(hook, "__qualname__", repr(hook)),
                received.name,
            )
