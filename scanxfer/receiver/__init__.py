"""The receiver: accept connections, let in only paired senders, store files durably.

One thread per connection keeps blocking file I/O (fsync can take a while on an SD card)
from stalling other senders; the main thread only accepts, watches signals and talks to
systemd.  The pieces: `server` (the main loop over a list of doors: reload, shutdown),
`doors` (what every door shares: listener, a thread per connection, max_connections),
`protocol_door` and `prototype_door` (the two doors), `gate` (TLS identity, sender keys, the
brake on failed handshakes), `handler` (one connection: TLS, handshake, deadlines), `intake`
(offers, payload, durable commit, answers), `admission` (size limit and free space, for both
doors), `after_store` (the hooks called for each file stored), `shared` (counters, registry),
`metrics` and `status_page` (what the metrics port serves, when metrics_listen is set).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from .. import scrape
from ..config import ReceiverConfig
from ..errors import ExitCode, ScanxferError
from ..keys.listening import recorded
from ..scrape import Endpoint
from ..sizes import counted
from ..store import Folders, LeftoverPartial, Store, StoreLimits, StoreSetupError, adopt_partials
from ..store import setup as store_setup
from ..tls import TLSSetupError
from .after_store import AfterStore, ReceivedFile
from .doors import CannotListen
from .gate import Gate
from .server import Server
from .shared import Services, Stats

__all__ = [
    "AfterStore",
    "ReceivedFile",
    "Server",
    "Services",
    "Stats",
    "check_storage",
    "serve",
]

log = logging.getLogger("scanxfer.receiver")


def serve(
    config: ReceiverConfig,
    reload: Callable[[], ReceiverConfig] | None = None,
    *,
    after_store: Sequence[AfterStore] = (),
) -> int:
    """Run the receiver until SIGTERM/SIGINT; the exit code for `scanxfer receive`.

    `reload` yields fresh settings on SIGHUP (config file and command line again).
    `after_store` is called for each file newly stored, on every door (see `after_store`).
    """
    try:
        store = _open_store(config)
    except StoreSetupError as error:
        log.error("%s", error)
        return error.exit_code
    _clean_leftovers(store, config.partial_max_age)
    try:
        gate = Gate(config)
    except TLSSetupError as error:
        log.error("%s", error)
        return ExitCode.UNREACHABLE
    except OSError as error:
        # Making the TLS identity under state_dir: a read-only or full disk, say.  (A bad
        # key file is no error here: the keyring logs it and keeps the keys read before.)
        log.error("cannot set up the TLS identity in %s: %s", config.state_dir, error)
        return ExitCode.UNREACHABLE
    services = Services(store, Stats(), gate, after_store=tuple(after_store))
    try:
        endpoint = _open_metrics(config, services)
    except ScanxferError as error:
        log.error("%s", error)
        return error.exit_code
    try:
        server = Server(config, services, reload)
    except CannotListen as error:
        log.error("%s", error)
        return ExitCode.UNREACHABLE
    else:
        # For `scanxfer keys add`: the port really bound, which --listen or port 0 may change.
        with recorded(config.state_dir, server.doors[0].address):
            server.serve_forever()
    finally:
        if endpoint is not None:
            endpoint.close()
    return ExitCode.OK


def _open_metrics(config: ReceiverConfig, services: Services) -> Endpoint | None:
    """The metrics endpoint and status page where metrics_listen says; None when it is off.

    Raises MetricsUnavailable (no prometheus_client) or CannotServeMetrics.
    """
    if config.metrics_listen is None:
        return None
    scrape.library()  # first: its error names the package to install
    from .metrics import open_endpoint  # needs prometheus_client: only when asked for

    address = config.metrics_listen
    return open_endpoint(address.host, address.port, services, config.name)


def check_storage(config: ReceiverConfig) -> Folders:
    """What `receive --check` and a reload ask: could the receiver store files as set?

    Makes nothing, so a check changes no folder; raises StoreSetupError saying what is wrong.
    Returns the folders checked, their paths absolute.
    """
    folders = Folders.of(config.incoming_dir, config.partial_dir, config.state_dir)
    owner = store_setup.service_owner(config.state_dir)
    store_setup.check_as(owner, folders, config.min_free_space)
    return folders


def _open_store(config: ReceiverConfig) -> Store:
    """The store, its folders made and checked (see store.setup); raises StoreSetupError."""
    if config.partial_dir is None:
        folders = Folders.of(config.incoming_dir, None, config.state_dir)
        moved, dropped = adopt_partials(config.state_dir / "partial", folders)
        if moved or dropped:
            log.info(
                "moved %s from %s to %s, the partial folder's new default place%s",
                counted(moved, "unfinished file"),
                config.state_dir / "partial",
                folders.partial,
                f"; dropped {dropped} that could not move (they are sent again)" if dropped else "",
            )
    return Store(
        config.incoming_dir,
        config.partial_dir,
        StoreLimits(config.max_path_length, config.max_path_depth),
        own=config.state_dir,
        min_free_space=config.min_free_space,
    )


def _clean_leftovers(store: Store, max_age: float) -> None:
    for removed in store.remove_stale_partials(max_age):
        log.warning(
            "removed stale partial of %s (%d bytes held, %.0f days old)",
            _described(removed),
            removed.held,
            removed.age_seconds / 86400,
        )
    leftovers = store.leftover_partials()
    if leftovers:
        log.info(
            "%d interrupted files can resume: %s",
            len(leftovers),
            ", ".join(f"{_described(item)} ({item.held} bytes held)" for item in leftovers[:10]),
        )


def _described(leftover: LeftoverPartial) -> str:
    # A small file cut off by a crash has no sidecar naming it (see store.partial).
    return f"{leftover.path} of {leftover.size} bytes" if leftover.path else "a small file"
