"""Helpers of the test suite (fleets with the suite's settings, move helpers, checks, the API client).

The fleet harness itself (processes, databases, ports, config, services) is ``migrator/fleet/``,
shared with the demo and the benchmarks.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
