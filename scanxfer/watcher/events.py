"""Turns watchdog events into calls on a `FileEvents`: the one place that knows watchdog.

Kept apart from CompletionWatcher because watchdog's event classes differ between watchdog 2.2
(Debian bookworm) and later releases. `FileEvents` is what any source of change notices feeds
(CompletionWatcher implements it): a second backend, such as fanotify or a share's own change
notices, would call the same four methods.
"""

from __future__ import annotations

from typing import Protocol

import watchdog.events as wd_events

# Events that mean "this file is being written". Attribute events exist only in watchdog >= 3
# (2.2 reports IN_ATTRIB as a modification); they matter because copy tools set the mtime after
# the last write. Opened and closed-without-write events are deliberately absent: our own header
# check and the sender's reads produce them, and counting them would postpone a file forever.
_ACTIVITY_EVENTS: tuple[type[wd_events.FileSystemEvent], ...] = (
    wd_events.FileCreatedEvent,
    wd_events.FileModifiedEvent,
    wd_events.FileClosedEvent,
    *((wd_events.FileAttribEvent,) if hasattr(wd_events, "FileAttribEvent") else ()),
)


class FileEvents(Protocol):
    """What a source of change notices reports, each with the absolute path it concerns.

    Called from the source's own thread; paths outside the watched root are ignored.
    """

    def file_active(self, path: bytes | str) -> None:
        """A file was created, written, closed after writing, or had its attributes changed."""

    def file_gone(self, path: bytes | str) -> None:
        """A file was deleted or moved away."""

    def dir_appeared(self, path: bytes | str) -> None:
        """A directory was created or moved in: files in it may predate any watch on it."""

    def dir_gone(self, path: bytes | str) -> None:
        """A directory was deleted or moved away, with everything below it."""


class EventHandler(wd_events.FileSystemEventHandler):
    """Forwards watchdog events to a `FileEvents`.

    Overrides dispatch(), the single entry point that watchdog 2.2 and 7.x both call, because
    the on_* hooks differ between those versions.
    """

    def __init__(self, sink: FileEvents) -> None:
        super().__init__()
        self._sink = sink

    def dispatch(self, event: wd_events.FileSystemEvent) -> None:
        sink = self._sink
        if isinstance(event, wd_events.FileMovedEvent):
            sink.file_gone(event.src_path)
            sink.file_active(event.dest_path)
        elif isinstance(event, wd_events.DirMovedEvent):
            sink.dir_gone(event.src_path)
            sink.dir_appeared(event.dest_path)
        elif isinstance(event, _ACTIVITY_EVENTS):
            sink.file_active(event.src_path)
        elif isinstance(event, wd_events.FileDeletedEvent):
            sink.file_gone(event.src_path)
        elif isinstance(event, wd_events.DirDeletedEvent):
            sink.dir_gone(event.src_path)
        elif isinstance(event, wd_events.DirCreatedEvent):
            sink.dir_appeared(event.src_path)
