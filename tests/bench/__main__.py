"""`python -m tests.bench`, which `make bench` runs."""

import sys

from .run import main

sys.exit(main())
