"""Metrics (Prometheus) and structured logs (one JSON object per line)."""
