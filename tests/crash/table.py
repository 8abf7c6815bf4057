"""The table `make crash-test` prints: one row per side, from the reports the tests record."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .scenario import CutReport

# make crash-test sets it: the full number of cuts, big scans of 64 MiB and more.
FULL_VARIABLE = "SCANXFER_CRASH_FULL"
# Where the rows go, one JSON line per side, for the Makefile to print.
TABLE_VARIABLE = "SCANXFER_CRASH_TABLE"
HEADER = ("side", "cut points", "ACKed files", "files lost", "partials visible", "restarts failed")


def full_run() -> bool:
    return os.environ.get(FULL_VARIABLE) == "1"


def record(report: CutReport) -> None:
    """Print the report's row (seen with -s) and add it to $SCANXFER_CRASH_TABLE, if set."""
    print(format_rows([report.row()]))
    print(where_cuts_fell(report))
    table = os.environ.get(TABLE_VARIABLE)
    if table:
        with Path(table).open("a") as out:
            out.write(json.dumps({"row": report.row(), "where": where_cuts_fell(report)}) + "\n")


def where_cuts_fell(report: CutReport) -> str:
    places = ", ".join(f"{where} {n}" for where, n in report.cut_at.most_common())
    syncfs = f"; syncfs seen through strace: {report.syncfs_seen}" if report.syncfs_seen else ""
    return f"{report.side} cuts fell: {places}{syncfs}"


def format_rows(rows: list[tuple[str, int, int, int, int, int]]) -> str:
    lines = [HEADER, *[tuple(str(cell) for cell in row) for row in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines
    )


def main() -> None:
    """Print the table from $SCANXFER_CRASH_TABLE, then where the cuts fell (a side whose run
    broke off before its checks has no row)."""
    table = Path(os.environ[TABLE_VARIABLE])
    records = (
        [json.loads(line) for line in table.read_text().splitlines()] if table.exists() else []
    )
    print(format_rows([tuple(record["row"]) for record in records]))
    for record in records:
        print(record["where"])


if __name__ == "__main__":
    main()
