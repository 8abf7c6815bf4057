"""scrape.Endpoint: /metrics and pages over real HTTP on loopback, and its failures."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.core import CounterMetricFamily, Metric

from scanxfer.scrape import CannotServeMetrics, Endpoint


class OneCounter:
    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("demo_things", "Things", value=3)


def get(endpoint: Endpoint, path: str) -> tuple[int, str, str]:
    host, port = endpoint.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, "", ""


def broken() -> tuple[str, bytes]:
    raise RuntimeError("a bug in a page")


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint(
        "127.0.0.1", 0, OneCounter(), {"/": lambda: ("text/html", b"hi"), "/b": broken}
    )
    yield served
    served.close()


def test_metrics_and_pages_are_served(endpoint: Endpoint) -> None:
    status, kind, text = get(endpoint, "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert "demo_things_total 3.0" in text
    assert get(endpoint, "/?refresh") == (200, "text/html", "hi")


def test_an_unknown_path_is_404_and_a_failing_page_500_and_serving_goes_on(
    endpoint: Endpoint,
) -> None:
    assert get(endpoint, "/nothing")[0] == 404
    assert get(endpoint, "/b")[0] == 500
    assert get(endpoint, "/metrics")[0] == 200


def test_close_ends_its_thread() -> None:
    served = Endpoint("127.0.0.1", 0, OneCounter())
    served.close()
    assert not served.thread.is_alive()
    assert "metrics" not in {thread.name for thread in threading.enumerate()}


def test_a_port_in_use_is_refused_with_what_to_do() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(CannotServeMetrics, match="choose another metrics_listen"):
            Endpoint("127.0.0.1", port, OneCounter())
