"""Where scanxfer spends its time: py-spy samples of the receiver and the sender during B1, B2.

    python -m tests.bench.hotspots --py-spy PATH [--only B1,B2] [--lines] [--out DIR]

Not part of `make bench`: timings taken under a sampler are not comparable.  py-spy is no
dependency of the project; put it in a throwaway virtualenv, e.g.
`python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy`, and run this as root (or
with ptrace allowed).  For each workload it writes py-spy's raw collapsed stacks (for
flamegraph.pl or speedscope) and prints the functions with the most samples: "self" counts
samples where the function itself was running, "total" those where it was on the stack.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import tempfile
from pathlib import Path

from ..procs import Proc
from . import run
from .contenders import (
    GIVE_UP_SECONDS,
    cleanup,
    paired_sender_config,
    python_module,
    scanxfer_receiver,
)

TOP = 15


def _spy(py_spy: Path, target: Proc, output: Path, lines: bool) -> Proc:
    """Attach py-spy to `target` until it exits; samples every thread doing Python work."""
    argv = [str(py_spy), "record", "--pid", str(target.pid), "--rate", "250"]
    options = [*([] if lines else ["--function"]), "--format", "raw", "-o", str(output)]
    spy = Proc(f"py-spy {target.label}", [*argv, *options], merge_stdout=True)
    spy.wait_for(r"Sampling process", 30)
    return spy


def profile(
    py_spy: Path, workload: run.Workload, work: Path, out: Path, lines: bool, tls: bool
) -> list[Path]:
    source = work / "data" / workload.name
    run.generate(source, workload)
    outputs = [out / f"{workload.name}-receiver.txt", out / f"{workload.name}-sender.txt"]
    with scanxfer_receiver(work, tls) as (receiver, port):
        receiver_spy = _spy(py_spy, receiver, outputs[0], lines)
        sender_config = paired_sender_config(
            work, port, f"watch_dir: {source}\nstate_dir: {work / 'sender'}\n"
        )
        sender = Proc(
            "sender", python_module("scanxfer", "send", "-c", str(sender_config), "--once")
        )
        with cleanup(sender, receiver_spy):
            sender_spy = _spy(py_spy, sender, outputs[1], lines)
            with cleanup(sender_spy):
                if sender.wait(GIVE_UP_SECONDS) != 0:
                    raise RuntimeError(f"sender failed:\n{sender.log_tail()}")
                receiver.stop()
                sender_spy.wait(60)
                receiver_spy.wait(60)
    return outputs


def summarize(path: Path) -> str:
    """The busiest functions of one raw py-spy file, by self and by total samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{path.name}: {samples} samples"]
    for title, counter in (("self", own), ("total", total)):
        lines.append(f"  by {title}:")
        lines += [
            f"    {100 * n / max(samples, 1):5.1f}%  {frame}"
            for frame, n in counter.most_common(TOP)
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.hotspots", description=__doc__)
    parser.add_argument("--py-spy", type=Path, required=True, help="the py-spy program")
    parser.add_argument("--only", default="B1,B2", help="workloads (B1,B2)")
    parser.add_argument("--lines", action="store_true", help="count per line, not function")
    parser.add_argument("--tls", action="store_true", help="profile with TLS on")
    default_out = Path(tempfile.gettempdir()) / "scanxfer-profiles"
    parser.add_argument("--out", type=Path, default=default_out, help=f"({default_out})")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = {name.strip().upper() for name in args.only.split(",")}
    for workload in run.BULK:
        if workload.name in wanted:
            work = Path(tempfile.mkdtemp(prefix="scanxfer-profile-"))
            try:
                for output in profile(args.py_spy, workload, work, args.out, args.lines, args.tls):
                    print(summarize(output), flush=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
