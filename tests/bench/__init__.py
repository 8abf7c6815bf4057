"""The benchmark harness behind `make bench` (not tests: pytest never collects these files)."""
