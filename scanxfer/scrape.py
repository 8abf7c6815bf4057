"""The metrics endpoint: an HTTP server in a thread of its own, serving /metrics and pages.

Only a daemon whose settings name `metrics_listen` opens one, and only then is the
Prometheus client library imported: the receiver runs without it (the Debian package only
recommends python3-prometheus-client), and says what to install when it is asked for
metrics it cannot serve.  What is exported is computed by a collector at scrape time (see
`tally`), so nobody scraping costs nothing.
"""

from __future__ import annotations

import importlib
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any, ClassVar

from .errors import ExitCode, ScanxferError

log = logging.getLogger("scanxfer.metrics")

# A page other than /metrics: its content type and body, made when it is asked for.
Page = Callable[[], tuple[str, bytes]]


class MetricsUnavailable(ScanxferError):
    """metrics_listen is set, but the Prometheus client library is not installed."""

    exit_code = ExitCode.USAGE


class CannotServeMetrics(ScanxferError):
    """The metrics address cannot be bound (in use, not this host's)."""

    exit_code = ExitCode.UNREACHABLE


def library() -> ModuleType:
    """prometheus_client, or MetricsUnavailable saying how to install it."""
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        raise MetricsUnavailable(
            "metrics_listen is set, but the Prometheus client library is missing: install it "
            "(`sudo apt install python3-prometheus-client`, or `pip install prometheus_client` "
            "where scanxfer was installed with pip), or set metrics_listen: null"
        ) from None


class Endpoint:
    """/metrics from `collector` (an object with `collect()`), and `pages` by path."""

    def __init__(
        self, host: str, port: int, collector: object, pages: Mapping[str, Page] | None = None
    ) -> None:
        prometheus = library()
        registry = prometheus.CollectorRegistry(auto_describe=False)
        registry.register(collector)

        def metrics() -> tuple[str, bytes]:
            return prometheus.CONTENT_TYPE_LATEST, prometheus.generate_latest(registry)

        handler = type("Handler", (_Handler,), {"pages": {**(pages or {}), "/metrics": metrics}})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        try:
            self.server = server_class((host, port), handler)
        except OSError as error:
            raise CannotServeMetrics(
                f"cannot serve metrics on {host}:{port}: {error.strerror or error}; choose "
                f"another metrics_listen, or stop what is listening there"
            ) from None
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )
        self.thread.start()
        log.info("metrics on http://%s:%d/metrics", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens: the port the kernel chose for port 0."""
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _Handler(BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, Page]]
    # A client that connects and says nothing would hold its thread for ever.
    timeout = 30

    def do_GET(self) -> None:
        page = self.pages.get(self.path.partition("?")[0])
        if page is None:
            self.send_error(404, "not here: try /metrics or /")
            return
        try:
            content_type, body = page()
        except Exception:
            # A scrape must not take the daemon down, nor go unnoticed.
            log.exception("metrics: cannot render %s", self.path)
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s would drown the journal: nothing is logged per request."""
