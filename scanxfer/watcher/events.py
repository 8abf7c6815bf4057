"""Turns watchdog events into the watcher's callbacks.

Kept apart from CompletionWatcher because it is the one place that knows watchdog's event
classes, which differ between watchdog 2.2 (Debian bookworm) and later releases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import watchdog.events as wd_events

if TYPE_CHECKING:
    from .completion import CompletionWatcher


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


class _EventHandler(wd_events.FileSystemEventHandler):
    """Forwards watchdog events to the watcher.

    Overrides dispatch(), the single entry point that watchdog 2.2 and 7.x both call, because
    the on_* hooks differ between those versions.
    """

    def __init__(self, watcher: CompletionWatcher) -> None:
        super().__init__()
        self._watcher = watcher

    def dispatch(self, event: wd_events.FileSystemEvent) -> None:
        w = self._watcher
        if isinstance(event, wd_events.FileMovedEvent):
            w._file_gone(event.src_path)
            w._file_active(event.dest_path)
        elif isinstance(event, wd_events.DirMovedEvent):
            w._dir_gone(event.src_path)
            w._dir_appeared(event.dest_path)
        elif isinstance(event, _ACTIVITY_EVENTS):
            w._file_active(event.src_path)
        elif isinstance(event, wd_events.FileDeletedEvent):
            w._file_gone(event.src_path)
        elif isinstance(event, wd_events.DirDeletedEvent):
            w._dir_gone(event.src_path)
        elif isinstance(event, wd_events.DirCreatedEvent):
            w._dir_appeared(event.src_path)
