"""Reproducible performance measurements against raw PostgreSQL (see docs/performance.md)."""
