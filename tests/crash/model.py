"""What a power cut would leave of a folder: the durable model behind tests/crash/powercut.py.

Every operation is applied at once to the live folder, so the program under test reads what
it wrote.  Beside it the model keeps what would survive a power cut, lazily: a file or a
directory changed since it was last made durable has its durable state kept aside, the first
time it changes; one unchanged since is durable as it stands.

* File data: before the first change (write, truncate, utime, chmod) the durable content is
  copied to ``shadow/<node>``; fsync or fdatasync of the file drops that copy.  A new file's
  durable content is empty.  A file's last name being removed keeps its content aside too,
  as a durable directory entry may still name it.
* Directory entries: before the first change (create, mkdir, link, unlink, rename, rmdir) the
  directory's entries as {name: node} are kept in memory; fsync of the directory drops them.
  A new directory is durably empty.
* A rename between two directories is atomic, as on a journaling file system: making either
  directory durable makes the rename durable in both.  (Without that, this model could lose
  a file whose source directory alone was synced, which ext4 never does.)
* syncfs/sync: everything is durable.

Nodes are numbered by the model, not by inode number: the backing file system reuses the
inode of a deleted file for the next new one, while a durable entry may still name the old.
`rebuild` lays the surviving tree out with hard links into the live folder and the copies,
so a cut costs no copying of data; links between names of one node are kept.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Rename:
    node: int
    old_dir: int
    old_name: str
    new_dir: int
    new_name: str


class DurableModel:
    """The durable state of the tree at `live`; copies of file contents go into `shadow`."""

    def __init__(self, live: Path, shadow: Path) -> None:
        self.live, self.shadow = live, shadow
        shadow.mkdir(parents=True, exist_ok=True)
        self._numbers = itertools.count(1)
        self._nodes: dict[int, int] = {}  # live inode -> node, for every live name seen
        self._dirs: dict[int, dict[str, int]] = {}  # node -> durable entries, if changed since
        self._renames: list[_Rename] = []  # across directories, not yet durable on either side
        self.root = self.node(live)

    # --- identities --------------------------------------------------------------------------

    def node(self, path: Path) -> int:
        inode = os.lstat(path).st_ino
        if inode not in self._nodes:
            self._nodes[inode] = next(self._numbers)
        return self._nodes[inode]

    def node_of_fd(self, fd: int) -> int | None:
        """The node of an open file; None once its last name is gone (its content is kept)."""
        st = os.fstat(fd)
        if st.st_nlink == 0:
            return None
        if st.st_ino not in self._nodes:
            self._nodes[st.st_ino] = next(self._numbers)
        return self._nodes[st.st_ino]

    def _forget(self, path: Path) -> None:
        self._nodes.pop(os.lstat(path).st_ino, None)

    def _copy(self, node: int) -> Path:
        return self.shadow / str(node)

    def _entries(self, directory: Path) -> dict[str, int]:
        return {name: self.node(directory / name) for name in os.listdir(directory)}

    # --- before a change ---------------------------------------------------------------------

    def file_changes(self, path: Path) -> None:
        """Keep the durable content of the file at `path` aside before it changes.

        A directory's own mode and times are not modelled: they come back as they are.
        """
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            self._keep_content(self.node(path), path)

    def fd_changes(self, fd: int) -> None:
        node = self.node_of_fd(fd)
        if node is not None and not self._copy(node).exists():
            shutil.copy2(f"/proc/self/fd/{fd}", self._copy(node))

    def _keep_content(self, node: int, path: Path) -> None:
        if not self._copy(node).exists():
            shutil.copy2(path, self._copy(node), follow_symlinks=False)

    def dir_changes(self, directory: Path) -> None:
        """Keep the durable entries of `directory` aside before one changes."""
        node = self.node(directory)
        if node not in self._dirs:
            self._dirs[node] = self._entries(directory)

    def name_goes(self, path: Path) -> None:
        """`path` is about to be unlinked, renamed over or removed (a directory)."""
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            self.dir_changes(path)
            self._forget(path)
        elif st.st_nlink == 1:
            self._keep_content(self.node(path), path)
            self._forget(path)

    # --- after a change ----------------------------------------------------------------------

    def created_file(self, path: Path) -> None:
        """A new file: durably empty (its durable entry, if any, comes with its directory)."""
        self._copy(self.node(path)).write_bytes(b"")

    def created_dir(self, path: Path) -> None:
        self._dirs[self.node(path)] = {}

    def renamed(self, old: Path, new: Path) -> None:
        if old.parent != new.parent:
            self._renames.append(
                _Rename(
                    self.node(new),
                    self.node(old.parent),
                    old.name,
                    self.node(new.parent),
                    new.name,
                )
            )

    # --- durability --------------------------------------------------------------------------

    def file_synced(self, fd: int) -> None:
        node = self.node_of_fd(fd)
        if node is not None:
            self._copy(node).unlink(missing_ok=True)

    def dir_synced(self, directory: Path) -> None:
        node = self.node(directory)
        self._dirs.pop(node, None)
        for rename in [r for r in self._renames if node in (r.old_dir, r.new_dir)]:
            self._renames.remove(rename)
            if (entries := self._dirs.get(rename.old_dir)) is not None:
                entries.pop(rename.old_name, None)
            if (entries := self._dirs.get(rename.new_dir)) is not None:
                entries[rename.new_name] = rename.node

    def all_synced(self) -> None:
        """syncfs or sync: everything is durable."""
        self._dirs.clear()
        self._renames.clear()
        for copy in self.shadow.iterdir():
            copy.unlink()

    # --- the power cut -----------------------------------------------------------------------

    def rebuild(self, survivor: Path) -> None:
        """Lay out at `survivor` the tree a power cut would leave."""
        places: dict[int, Path] = {}
        for path in [self.live, *self.live.rglob("*")]:
            places.setdefault(self.node(path), path)
        self._rebuild_dir(self.root, survivor, places, {})

    def _rebuild_dir(
        self, node: int, target: Path, places: dict[int, Path], made: dict[int, Path]
    ) -> None:
        target.mkdir()
        entries = self._dirs.get(node)
        if entries is None:
            entries = self._entries(places[node])
        for name, child in entries.items():
            if child in self._dirs or (child in places and places[child].is_dir()):
                self._rebuild_dir(child, target / name, places, made)
            else:
                os.link(made.get(child) or self._content(child, places), target / name)
                made.setdefault(child, target / name)

    def _content(self, node: int, places: dict[int, Path]) -> Path:
        copy = self._copy(node)
        if copy.exists():
            return copy
        if node not in places:
            raise AssertionError(f"power-cut model: the content of node {node} was not kept")
        return places[node]
