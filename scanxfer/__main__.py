"""Allow ``python -m scanxfer`` where the console script is not on PATH."""

from scanxfer.cli import main

raise SystemExit(main())
