"""docs/monitoring: the alert rules pass promtool, fire as meant, and the rules and the
dashboard name only metrics the code exports (and the dashboard shows every one of them);
the reference table in docs/monitoring/README.md lists exactly what is exported.

promtool comes from Debian's prometheus package (tests/system/prerequisites.sh installs it);
without it these tests fail, saying so: they never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client.core import Metric

from scanxfer.receiver.metrics import ReceiverCollector
from scanxfer.receiver.shared import Stats
from scanxfer.sender.metrics import SenderCollector
from scanxfer.sender.run_state import Link, Tally

DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
RULES = DOCS / "scanxfer.rules.yml"
RULES_TEST = DOCS / "scanxfer.rules.test.yml"
DASHBOARD = DOCS / "scanxfer-dashboard.json"
REFERENCE = DOCS / "README.md"
METRIC_NAME = re.compile(r"\bscanxfer_[a-z_]+")
GRID_COLUMNS = 24


def promtool(*args: str, cwd: Path = DOCS) -> str:
    path = shutil.which("promtool")
    assert path is not None, (
        "promtool is missing: run `bash tests/system/prerequisites.sh` (it installs Debian's "
        "prometheus package, which carries promtool), or `sudo apt install prometheus`"
    )
    result = subprocess.run(
        [path, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def families() -> list[Metric]:
    """What both collectors export, with every series filled."""
    stats = Stats()
    stats.stored("run/a.npy", 10, "lab-pc")
    stats.commit_seconds.observe(0.01)
    services = SimpleNamespace(
        stats=stats,
        store=SimpleNamespace(incoming_dir=DOCS, leftover_partials=list),
        gate=SimpleNamespace(brake=SimpleNamespace(total=0)),
    )
    tally = Tally(last_delivered=1.0)
    sender = SenderCollector(tally)
    sender.follow(
        SimpleNamespace(config=SimpleNamespace(name="lab-pc"), queued={}, offered={}, link=Link())
    )
    return [*ReceiverCollector(services).collect(), *sender.collect()]


def exported() -> tuple[set[str], set[str]]:
    """(the sample names, the family names) the collectors export."""
    found = families()
    return {sample.name for family in found for sample in family.samples}, {
        family.name for family in found
    }


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def names_in(exprs: Iterable[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES.name)


def test_each_alert_fires_on_its_case_and_not_on_a_healthy_one() -> None:
    assert "SUCCESS" in promtool("test", "rules", RULES_TEST.name)


@pytest.mark.parametrize("where", ["rules", "dashboard"])
def test_only_exported_metric_names_are_used(where: str) -> None:
    exprs = rule_exprs() if where == "rules" else panel_exprs()
    samples, _ = exported()
    unknown = names_in(exprs) - samples
    assert not unknown, f"{where} use metrics the code does not export: {sorted(unknown)}"


def test_the_dashboard_shows_every_metric() -> None:
    used = names_in(panel_exprs())
    _, families = exported()
    missing = {family for family in families if not any(n.startswith(family) for n in used)}
    assert not missing, f"no panel shows {sorted(missing)}"


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool has no query check of its own: the queries go through it as recording rules."""
    rules = [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": target["expr"]}
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert "SUCCESS" in promtool("check", "rules", path.name, cwd=tmp_path)


def test_the_dashboard_is_a_well_formed_grafana_import() -> None:
    data = dashboard()
    assert data["title"] and data["uid"] and isinstance(data["schemaVersion"], int)
    inputs = {f"${{{item['name']}}}" for item in data["__inputs"] if item["type"] == "datasource"}
    panels = data["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for item in (panel, *panel["targets"]):
            assert item["datasource"]["uid"] in inputs, f"{panel['title']!r}: unknown datasource"


def test_the_reference_table_lists_every_metric_with_its_type_and_labels() -> None:
    rows = re.findall(r"^\| `(scanxfer_\w+)` \| (\w+) \|([\w, ]*)\|", REFERENCE.read_text(), re.M)
    documented = {name: (kind, labels.strip()) for name, kind, labels in rows}
    actual = {
        family.name + ("_total" if family.type == "counter" else ""): (
            family.type,
            ", ".join(sorted({key for s in family.samples for key in s.labels} - {"le"})),
        )
        for family in families()
    }
    assert documented == actual
