#!/usr/bin/env bash
# Peak memory of `scanxfer receive` and `scanxfer send --once` moving 2,000 small scans
# (64 KiB) and one 1 GiB scan over loopback, measured with /usr/bin/time -v, then verified.
# Usage: tests/bench/peak_rss.sh [WORKDIR]   (needs ~2.5 GB free; run after `make venv`)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
scanxfer="$repo/.venv/bin/scanxfer"
work=${1:-$(mktemp -d)}
port=5077
cd "$work"
rm -rf scans incoming receiver-state sender-state
"$scanxfer" -q simulate --dir scans/small --count 2000 --interval 0 --shape 128x256
"$scanxfer" -q simulate --dir scans/big --count 1 --interval 0 --shape 16384x32768
printf 'state_dir: %s/sender-state\n' "$work" > sender.yaml

/usr/bin/time -v -o receiver.time "$scanxfer" -q receive --listen "127.0.0.1:$port" \
    --dir incoming --state-dir receiver-state &
timer=$!
sleep 2
/usr/bin/time -v -o sender.time "$scanxfer" -q send -c sender.yaml \
    --to "127.0.0.1:$port" --watch scans --once
kill -TERM "$(pgrep -P "$timer")"
wait "$timer"
"$scanxfer" verify --source scans --dest incoming
grep -H -E "Maximum resident|Elapsed" sender.time receiver.time
