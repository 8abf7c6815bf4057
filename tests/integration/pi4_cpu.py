"""`python -m tests.integration.pi4_cpu ARGS`: scanxfer, run as a user runs it, on a CPU that
/proc/cpuinfo reports as a Raspberry Pi 4's (no AES instructions).

The receiver's cipher detection reads the CPU through `cipher.read_cpuinfo`; this drives it.
When `scanxfer receive` starts itself again for OpenSSL (`cipher.follow`), it runs this very
module again, so the second process sees the same CPU.
"""

from __future__ import annotations

import sys

from scanxfer import cipher
from scanxfer.cli import main

# A Pi 4's Features line (arm64): no "aes".
PI4_CPUINFO = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"

if __name__ == "__main__":
    cipher.read_cpuinfo = lambda: PI4_CPUINFO
    sys.exit(main())
