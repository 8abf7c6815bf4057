"""bench/results.md: the headline table (what the README shows), the targets, then the details."""

from __future__ import annotations

from typing import Any

from .report import TLS_CIPHERS, TLS_NOTE, Target, get, ratio, tls_tool
from .writers import rows as writer_check_rows


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ratio_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render(results: dict[str, Any], summary: dict[str, Any], verdicts: list[Target]) -> str:
    rsync = results["rsync_tool"]
    lines = [
        "# scanxfer benchmark (`make bench`)",
        "",
        _machine_line(results),
        "",
        *_stamps(results),
        f"Loopback, medians of {results['repetitions']} repetitions; 1-minute load average "
        f"{results['load_average_before']:.2f} before, {results['load_average_after']:.2f} after "
        "(other work on the machine slows every tool). Ratios divide scanxfer's "
        "median by the other tool's median from the same run. The bare pump is the prototype's "
        "wire format made durable: sendfile, recv_into, write, fsync, rename, fsync of the "
        "directory, and a 1-byte ACK per file.",
        "",
        f"**{TLS_NOTE}**",
        "",
        *_negotiated(summary),
        f"| Workload | Figure | scanxfer | bare pump | {rsync} | ÷ pump | ÷ rsync |",
        "|---|---|--:|--:|--:|--:|--:|",
        *_bulk_rows(summary, rsync),
        *_latency_rows(summary),
        "",
        "## Targets (issue 6; TLS off unless said)",
        "",
        "| | Target | Figure | Verdict |",
        "|---|---|--:|---|",
        *(
            f"| {t.workload} | {t.claim} | {_num(t.figure, 2)} | {_verdict(t.met)} |"
            for t in verdicts
        ),
        "",
        "Issue 6 set the tls: false targets when plain TCP carried the bytes untouched. Since "
        "issue 16 every byte there carries a tag, which the sender must read the file to make "
        "(no sendfile) and the receiver must check: B1's throughput and CPU targets for "
        "tls: false are out of reach by design, and TLS, the default, is the faster mode.",
        "",
        *_rate_limit_rows(summary),
        *(writer_check_rows(results["W1"], summary["W1"]) if "W1" in results else []),
        *_details(results, summary, rsync),
        *_method(results),
    ]
    return "\n".join(lines) + "\n"


def _machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (
        f"{results['date']} · {m['nproc']} x {m['cpu_model']} · Linux {m['kernel']} · "
        f"{m['memory_gib']} GiB RAM · {m['filesystem']} · Python {m['python']} · "
        f"rsync {results['rsync_version']} · scanxfer {m['scanxfer']} ({m['commit']})"
    )


def _stamps(results: dict[str, Any]) -> list[str]:
    """When and at which commit B1, B2 and B3 were measured: with --merge they may come from
    different runs than the header (results from before the stamps have none)."""
    stamped = [
        f"{name} {results[name]['date']} at {results[name]['commit']}"
        for name in ("B1", "B2", "B3")
        if "date" in results.get(name, {})
    ]
    return [f"Measured: {'; '.join(stamped)}.", ""] if stamped else []


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def _row(
    label: str, figure: str, values: list[float | None], rsync: float | None, digits: int
) -> str:
    scanxfer, pump = values
    cells = [_num(scanxfer, digits), _num(pump, digits), _num(rsync, digits)]
    return (
        f"| {label} | {figure} | {' | '.join(cells)} | {_ratio_cell(ratio(scanxfer, pump))} "
        f"| {_ratio_cell(ratio(scanxfer, rsync))} |"
    )


def _bulk_rows(summary: dict[str, Any], rsync: str) -> list[str]:
    rows = []
    specs = (
        ("B1", "B1: 1 x 1 GiB", "throughput_mb_s", "throughput, MB/s", 0),
        ("B2", "B2: 2,000 x 64 KiB", "files_per_s", "files per second", 0),
        ("B1", "B4: during B1", "receiver_peak_rss_mib", "receiver peak RSS, MiB", 1),
        ("B1", "B4: during B1", "sender_peak_rss_mib", "sender peak RSS, MiB", 1),
        ("B2", "B4: during B2", "receiver_peak_rss_mib", "receiver peak RSS, MiB", 1),
        ("B2", "B4: during B2", "sender_peak_rss_mib", "sender peak RSS, MiB", 1),
        ("B1", "B5: during B1", "receiver_cpu_s_per_gb", "receiver CPU s per GB", 2),
        ("B2", "B5: during B2", "receiver_cpu_s_per_gb", "receiver CPU s per GB", 2),
    )
    for workload, label, key, figure, digits in specs:
        for tool, suffix in _variants(summary, workload):
            if get(summary, workload, tool) is not None:
                values = [get(summary, workload, name, key) for name in (tool, "pump")]
                rsync_value = get(summary, workload, rsync, key)
                rows.append(_row(label + suffix, figure, values, rsync_value, digits))
    return rows


def _variants(summary: dict[str, Any], workload: str) -> list[tuple[str, str]]:
    """scanxfer's tools with the words their rows are marked by; a TLS row names the cipher
    the sessions negotiated (the setting's name only for results that did not record it)."""
    tls = []
    for cipher in TLS_CIPHERS:
        said = get(summary, workload, tls_tool(cipher), "sessions") or {}
        names = sorted({session.rpartition(", ")[2] for session in said}) or [cipher]
        tls.append((tls_tool(cipher), f", TLS {' / '.join(names)}"))
    return [("scanxfer", ""), *tls, ("scanxfer metrics", ", metrics on")]


def _negotiated(summary: dict[str, Any]) -> list[str]:
    """What each scanxfer tool's sessions used, as its sender logged it on connecting."""
    lines = []
    for workload in ("B1", "B2"):
        for tool, figures in summary.get(workload, {}).items():
            said = figures.get("sessions") or {}
            counted = "; ".join(f"{session} ({n} runs)" for session, n in sorted(said.items()))
            if counted:
                lines.append(f"- {workload}, {tool}: {counted}")
    if not lines:
        return []
    return ["Negotiated, as each scanxfer sender logged it on connecting:", "", *lines, ""]


def _latency_rows(summary: dict[str, Any]) -> list[str]:
    rows = []
    for settle, figures in summary.get("B3", {}).items():
        for p in ("p50", "p99"):
            ack, pump = figures["close_to_ack_ms"][p], figures["pump_ms"][p]
            rows.append(
                _row(
                    f"B3: 1 MiB at 20 Hz, settle {settle} s",
                    f"close → ACK {p}, ms¹",
                    [ack, pump],
                    None,
                    1,
                )
            )
    return rows


def _rate_limit_rows(summary: dict[str, Any]) -> list[str]:
    """B6: the bandwidth limit, the rate achieved under it, and their ratio."""
    b6 = summary.get("B6")
    if b6 is None:
        return []
    return [
        "## Bandwidth limit (B6: 1 x 1 GiB, tls: false, max_rate set)",
        "",
        f"The sender's rate with `max_rate` set, timed as B1 (note 2), median of "
        f"{b6['repetitions']} repetitions; measured {b6['measured']}.",
        "",
        "| max_rate, MB/s | achieved, MB/s² | achieved ÷ max_rate | seconds² |",
        "|--:|--:|--:|--:|",
        f"| {_num(b6['max_rate_mb_s'])} | {_num(b6['throughput_mb_s'], 1)} | "
        f"{b6['achieved/limit']:.3f} | {_num(b6['seconds'], 2)} |",
        "",
    ]


def _details(results: dict[str, Any], summary: dict[str, Any], rsync: str) -> list[str]:
    lines = [
        "## Details (medians)",
        "",
        "| Workload | Tool | seconds² | wall seconds³ | receiver CPU s/GB | sender CPU s | "
        "receiver peak RSS, MiB | sender peak RSS, MiB |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for workload in ("B1", "B2"):
        for tool, fig in summary.get(workload, {}).items():
            cells = [
                _num(fig["seconds"], 2),
                _num(fig["wall_seconds"], 2),
                _num(fig["receiver_cpu_s_per_gb"], 2),
                _num(fig["sender_cpu_seconds"], 2),
                _num(fig["receiver_peak_rss_mib"], 1),
                _num(fig["sender_peak_rss_mib"], 1),
            ]
            lines.append(f"| {workload} | {tool} | {' | '.join(cells)} |")
    if "B3" in summary:
        lines += [
            "",
            "| B3 settle | writing rate, Hz | close → stored p50 / p99, ms | "
            "close → ACK p50 / p99, ms | mtime → ACK p50 / p99, ms⁴ | pump p50 / p99, ms |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for settle, f in summary["B3"].items():
            pairs = [
                f"{_num(f[k]['p50'], 1)} / {_num(f[k]['p99'], 1)}"
                for k in ("close_to_stored_ms", "close_to_ack_ms", "mtime_to_ack_ms", "pump_ms")
            ]
            lines.append(f"| {settle} s | {_num(f['rate_hz'], 1)} | {' | '.join(pairs)} |")
    if results.get("rsync_problem"):
        lines += ["", f"rsync: {results['rsync_problem']}"]
    return [*lines, ""]


def _method(results: dict[str, Any]) -> list[str]:
    b3 = results.get("B3", {})
    return [
        "## How it was measured",
        "",
        "Every run starts fresh receiving directories (and, for scanxfer, a fresh sender journal) "
        "and sends the whole source directory once, as real processes on 127.0.0.1. The source "
        "files are in the page cache; `sync` runs before each transfer. Tools take turns, in a "
        "rotating order, within each repetition. Every received tree is checked file by file "
        "against the source (size and xxh3-128). B2's received trees are deleted only at the "
        "end: ext4 passes over inodes freed within the last minute when it allocates new ones, "
        "so deleting 2,000 files between runs slowed whichever tool ran next.",
        "",
        "1. B3: `scanxfer simulate` writes "
        f"{b3.get('files', '—')} scans of 1 MiB (4 writes each) with --interval "
        f"{b3.get('interval_seconds', '—')} s into the directory a watching `scanxfer send` "
        "daemon (inotify) delivers from. Close = arrival of simulate's 'wrote NAME' line, "
        "logged just after the close; ACK = arrival of the sender's 'sent NAME' line, logged "
        "once the durable ACK is in; both are read from pipes by the same harness. p50 and p99 "
        "are per repetition, then the median over repetitions. The pump column is the pump "
        "sending the same files one after another: its send → ACK time, the floor without "
        "completion detection.",
        "2. From the sender's first log line ('sending N files', after interpreter start-up and "
        "the directory scan; for rsync, a C program, from its start) to the sender's exit, "
        "which comes after the last durable ACK. MB = 10⁶ bytes, GB = 10⁹ bytes.",
        "3. From spawning the sender to its exit, interpreter start-up included.",
        "4. The file's final mtime is stamped from the kernel's coarse clock (one tick = "
        "4 ms at HZ=250), so it can be up to a tick before the real close: pessimistic.",
        "",
        "CPU: the kernel's account (/proc/PID/stat, wait4) of the receiving process during the "
        "transfer only; for rsync, the daemon and its reaped workers. Peak RSS: VmHWM from "
        "/proc/PID/status; the rsync daemon's workers are not sampled.",
    ]
