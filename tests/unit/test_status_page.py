"""The receiver's status page: what it shows, and that a name cannot inject markup."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from scanxfer.keys.seen import Sighting
from scanxfer.receiver.shared import Stats
from scanxfer.receiver.status_page import REFRESH_SECONDS, render


def page(tmp_path: Path, stats: Stats, name: str = "pi") -> str:
    seen = {"lab-pc": Sighting(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "10.0.0.7")}
    services = SimpleNamespace(
        stats=stats,
        store=SimpleNamespace(incoming_dir=tmp_path),
        gate=SimpleNamespace(seen=SimpleNamespace(sightings=lambda: seen)),
    )
    return render(services, name).decode()  # type: ignore[arg-type]


def test_each_sender_has_a_row_with_its_last_file_and_todays_counts(tmp_path: Path) -> None:
    stats = Stats()
    stats.stored("run1/a.npy", 1000, "lab-pc")
    stats.stored("run1/b.npy", 2000, "lab-pc")
    html = page(tmp_path, stats)
    row = html.split("<tr><td>lab-pc</td>", 1)[1].split("</tr>", 1)[0]
    assert "run1/b.npy" in row and ">2<" in row and "2.9 KiB" in row, row
    assert html.index("run1/b.npy</td>") < html.index("run1/a.npy</td>")  # newest first
    assert f'content="{REFRESH_SECONDS}"' in html
    assert "src=" not in html and "href=" not in html  # no external asset


def test_names_are_escaped(tmp_path: Path) -> None:
    stats = Stats()
    stats.stored("<script>alert(1)</script>.npy", 1, "lab-pc")
    html = page(tmp_path, stats, name="<b>pi</b>")
    assert "<script>" not in html and "<b>pi" not in html
    assert "&lt;script&gt;" in html
