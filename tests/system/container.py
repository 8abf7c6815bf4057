"""A booted Debian bookworm with a real systemd, in a systemd-nspawn container.

The container shares the host's network, so a sender on the host reaches a receiver inside it
on 127.0.0.1; or, booted with `veth=True`, it has a network of its own: a veth link to the
host (`--network-veth`) with an address at each end, as a Pi has on a LAN, and no way out to
the internet (packages for it are fetched beforehand, by `fetch_packages`). Its root is a
debootstrapped tree cached under /var/cache/scanxfer-test and mounted read-only with a tmpfs
overlay (--volatile=overlay): every boot starts from the same clean system, nothing a test
does reaches the cache, and no copy of the tree is needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

CACHE = Path("/var/cache/scanxfer-test")
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# What a freshly installed Pi has in common with this tree: systemd, Python, and the PAM
# module that gives a (lingering) user their own systemd manager.
BASE_PACKAGES = "systemd,systemd-sysv,dbus,libpam-systemd,python3"
PATH_INSIDE = "/usr/sbin:/usr/bin:/sbin:/bin"
HOST_TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "dpkg-deb")

T = TypeVar("T")


class ContainerError(Exception):
    """The container could not be built, booted or driven."""


def require_host_tools(*extra: str) -> None:
    """Fail with the fix when a tool is missing: these tests are never skipped."""
    if os.geteuid() != 0:
        raise ContainerError("the system tests boot containers and need root; run them as root")
    missing = [tool for tool in (*HOST_TOOLS, *extra) if shutil.which(tool) is None]
    if missing:
        raise ContainerError(
            f"missing {', '.join(missing)}; `bash .ci/run` installs them (apt-get install "
            f"systemd-container debootstrap dpkg-dev lintian qemu-user-static binfmt-support)"
        )


def base_tree(arch: str) -> Path:
    """The debootstrapped tree for `arch`, built on first use and cached afterwards.

    Built under a temporary name and renamed when complete, so an interrupted build is never
    mistaken for a cached tree; a lock keeps two test runs from building it at once.
    """
    # Named after what goes into it, so changing BASE_PACKAGES builds a new tree.
    recipe = hashlib.sha256(f"{SUITE} {MIRROR} {BASE_PACKAGES}".encode()).hexdigest()[:12]
    tree = CACHE / f"{SUITE}-{arch}-{recipe}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{tree.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tree.is_dir():
            return tree
        partial = tree.with_name(tree.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            "debootstrap",
            f"--arch={arch}",
            "--variant=minbase",
            f"--include={BASE_PACKAGES}",
            SUITE,
            str(partial),
            MIRROR,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ContainerError(
                f"debootstrap for {arch} failed ({result.returncode}):\n{result.stdout[-3000:]}"
                f"\n{result.stderr[-3000:]}"
            )
        partial.rename(tree)
        return tree


@dataclass(frozen=True)
class VethLink:
    """The two ends of a container's own network: host0 inside, ve-... on the host."""

    host_address: str  # on the host's end, the container's default gateway
    container_address: str  # on host0, the container's only address but loopback
    prefix: int = 24


class Container:
    """One booted container; `sh()` runs a shell command inside it as root."""

    def __init__(
        self, tree: Path, name: str, console_log: Path, veth: VethLink | None = None
    ) -> None:
        self.tree, self.name, self.console_log, self.veth = tree, name, console_log, veth
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def boot(self, timeout: float) -> None:
        network = ["--network-veth"] if self.veth else []
        with open(self.console_log, "wb") as console:
            self._nspawn = subprocess.Popen(
                [
                    "systemd-nspawn",
                    f"--directory={self.tree}",
                    "--volatile=overlay",
                    "--boot",
                    f"--machine={self.name}",
                    "--register=no",
                    "--keep-unit",
                    *network,
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.init_pid = wait_for(self._find_init, timeout, f"{self.name}: systemd to start")
        if self.veth:
            self._link(self.veth)
        state = wait_for(self._booted, timeout, f"{self.name}: boot to finish")
        if state not in ("running", "degraded"):
            raise ContainerError(f"{self.name} booted into state {state!r}")

    def _link(self, veth: VethLink) -> None:
        """Address both ends of the veth pair and route the container through the host's.

        Done from the host with its own `ip` (a minimal Debian has none) in the container's
        network namespace: nspawn names the host's end after the machine, shortened past
        15 characters, so it is found as host0's peer instead.
        """
        inside = ["nsenter", f"--target={self.init_pid}", "--net", "ip"]
        shown = _run([*inside, "-o", "link", "show", "host0"])
        peer = re.search(r"host0@if(\d+)", shown)
        if peer is None:
            raise ContainerError(f"{self.name}: no veth peer in {shown!r}")
        outside = socket.if_indextoname(int(peer[1]))
        _run(["ip", "addr", "add", f"{veth.host_address}/{veth.prefix}", "dev", outside])
        _run(["ip", "link", "set", outside, "up"])
        _run([*inside, "addr", "add", f"{veth.container_address}/{veth.prefix}", "dev", "host0"])
        _run([*inside, "link", "set", "host0", "up"])
        _run([*inside, "route", "add", "default", "via", veth.host_address])

    def _find_init(self) -> int | None:
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            raise ContainerError(
                f"systemd-nspawn exited with {self._nspawn.returncode}:\n{self.console()}"
            )
        children = Path(f"/proc/{self._nspawn.pid}/task/{self._nspawn.pid}/children")
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return None

    def _booted(self) -> str | None:
        state = self.sh("systemctl is-system-running", check=False).stdout.strip()
        return None if state in ("", "initializing", "starting") else state

    def sh(
        self, command: str, *, check: bool = True, timeout: float = 600, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` with /bin/sh inside the container, as root or as `user` (with that
        user's XDG_RUNTIME_DIR, so `systemctl --user` reaches their manager)."""
        environment = [f"PATH={PATH_INSIDE}", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]
        argv = ["nsenter", f"--target={self.init_pid}", "--all", "env", "-i", *environment]
        if user is None:
            argv += ["sh", "-c", command]
        else:
            uid = self.sh(f"id -u {user}").stdout.strip()
            argv += ["runuser", "-u", user, "--", "env", f"XDG_RUNTIME_DIR=/run/user/{uid}"]
            argv += [f"HOME=/home/{user}", "sh", "-c", f"cd && {command}"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ContainerError(
                f"{self.name}: `{command}` exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
            )
        return result

    def path(self, inside: str) -> Path:
        """A path inside the running container, as the host sees it."""
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    def console(self) -> str:
        return self.console_log.read_text(errors="replace")[-4000:]

    def shutdown(self, timeout: float = 120) -> None:
        """Power the container off cleanly; kill it if that hangs.

        `systemctl poweroff` inside rather than SIGTERM to nspawn: nspawn forwards that as
        SIGRTMIN+3, which qemu-user renumbers on its way to an emulated (arm64) systemd, where
        it arrives as a request for rescue mode instead.
        """
        if self._nspawn is None or self._nspawn.poll() is not None:
            return
        if self.init_pid:
            self.sh("systemctl poweroff --no-block", check=False, timeout=60)
        else:  # never got as far as starting systemd
            self._nspawn.terminate()
        try:
            self._nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._nspawn.pid, signal.SIGKILL)
            self._nspawn.wait()
            raise ContainerError(f"{self.name} did not shut down within {timeout:.0f} s") from None


@contextlib.contextmanager
def booted(
    arch: str,
    workdir: Path,
    boot_timeout: float = 180,
    *,
    veth: VethLink | None = None,
    packages: Path | None = None,
) -> Iterator[Container]:
    """A container of `arch` for the duration of the block, with fresh package lists.

    With `veth` it has a network of its own, which reaches the host only: apt's lists and
    the archives it will install then come from `packages` (see `fetch_packages`).
    """
    tree = base_tree(arch)
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"scanxfer-{arch}-{os.getpid()}" + ("-veth" if veth else "")
    container = Container(tree, name, workdir / "console.log", veth)
    try:
        container.boot(boot_timeout)
        if packages is None:
            container.sh("apt-get update -q")
        else:
            for part in ("lists", "archives"):
                shutil.copytree(packages / part, container.path(APT_DIRS[part]), dirs_exist_ok=True)
        yield container
    finally:
        container.shutdown()


# Where apt keeps its package lists and downloaded archives, inside a container.
APT_DIRS = {"lists": "/var/lib/apt/lists", "archives": "/var/cache/apt/archives"}


def fetch_packages(arch: str, workdir: Path, debs: Sequence[Path]) -> Path:
    """apt's lists and every archive that installing `debs` needs, fetched in a container on
    the host's network: a directory that `booted(packages=...)` installs from offline."""
    fetched = workdir / "packages"
    with booted(arch, workdir) as container:
        for deb in debs:
            shutil.copyfile(deb, container.path(f"/root/{deb.name}"))
        names = " ".join(f"./{deb.name}" for deb in debs)
        container.sh(f"cd /root && apt-get install -y -q --download-only {names}")
        for part, inside in APT_DIRS.items():
            shutil.copytree(container.path(inside), fetched / part, ignore=_apt_locks)
    return fetched


def _apt_locks(directory: str, names: list[str]) -> list[str]:
    return [name for name in names if name == "lock"]


def veth_link() -> VethLink:
    """Addresses for one container's own link, in a /24 of 10.77.0.0/16 chosen by this
    process, so two test runs side by side do not share one."""
    subnet = 10 + os.getpid() % 240
    return VethLink(f"10.77.{subnet}.1", f"10.77.{subnet}.2")


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise ContainerError(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr}")
    return result.stdout


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `probe` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise ContainerError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def free_port() -> int:
    """A TCP port nobody listens on now, on the loopback the container shares."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
