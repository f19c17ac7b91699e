"""Figures of the fault suite: scenarios append one JSON line each; ``python -m tests.faults.report``
renders the table of docs/reliability.md.

    FAULTS_LONG=1 FAULTS_REPORT=/tmp/faults.jsonl .venv/bin/pytest -m faults tests/faults
    .venv/bin/python -m tests.faults.report /tmp/faults.jsonl
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field


@dataclass
class ScenarioResult:
    scenario: str
    trials: int = 0
    completed: int = 0
    failed_then_resumed: int = 0
    aborted_clean: int = 0
    violations: list[str] = field(default_factory=list)
    writes_acked: int = 0
    writes_rejected: int = 0
    writes_lost: int = 0
    worker_restarts: int = 0  # workers that exited by themselves and were restarted by the supervisor
    takeover_s: list[float] = field(default_factory=list)  # kill inside the write window -> next step done

    def save(self) -> None:
        path = os.environ.get("FAULTS_REPORT")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps(asdict(self)) + "\n")


def _median(values) -> str:
    import statistics

    return f"{statistics.median(values):.1f}" if values else ""


def render(lines: list[dict]) -> str:
    agg: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for r in lines:
        a = agg[r["scenario"]]
        for k in ("trials", "completed", "failed_then_resumed", "aborted_clean", "writes_acked", "writes_rejected",
                  "writes_lost", "worker_restarts"):
            a[k] += r.get(k, 0)
        a["violations"] += len(r["violations"])
        a.setdefault("takeover_s", []).extend(r.get("takeover_s") or [])
    out = ["| scenario | trials | completed | failed, then resumed | aborted clean | invariant violations |"
           " writes acknowledged | writes rejected (freeze) | writes lost | workers restarted |"
           " takeover in the window, median (s) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, a in agg.items():
        out.append(f"| {name} | {a['trials']} | {a['completed']} | {a['failed_then_resumed']} | {a['aborted_clean']}"
                   f" | {a['violations']} | {a['writes_acked']} | {a['writes_rejected']} | {a['writes_lost']}"
                   f" | {a['worker_restarts']} | {_median(a.get('takeover_s'))} |")
    return "\n".join(out)


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FAULTS_REPORT", "faults.jsonl")
    with open(path) as fh:
        print(render([json.loads(line) for line in fh if line.strip()]))
