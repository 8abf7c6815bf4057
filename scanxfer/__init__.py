"""scanxfer: move .npy scan files from an instrument PC to a Raspberry Pi, durably and verified."""

__version__ = "0.1.0"
