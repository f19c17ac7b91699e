"""What a step is: its name, the queue its task runs on, and its work.

A step either *runs* (one function of the move's context, on one worker) or *fans out*: ``plan``
splits it into units (key ranges of a table, blob columns) that ``unit`` runs on any number of
workers, and ``fan_in`` rolls their results up once the control database counts none pending.
Operator actions outside the step sequence (``abort``, ``cleanup``) are steps too: they have a
queue and a task, but no place in a strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Celery queues (each prefixed with ``celery.queue_prefix``): control steps, row units, blob units.
CONTROL, ROWS, BLOBS = "control", "rows", "blobs"
QUEUES: tuple[str, ...] = (CONTROL, ROWS, BLOBS)


@dataclass(frozen=True)
class Step:
    name: str
    queue: str = CONTROL
    run: Callable | None = None  # run(ctx): the whole step, on one worker
    plan: Callable | None = None  # plan(ctx) -> [unit dicts]
    unit: Callable | None = None  # unit(ctx, move_unit) -> result dict
    fan_in: Callable | None = None  # fan_in(ctx): after the last unit
    unit_queue: str | None = None
    operator: bool = False  # abort, cleanup: started by an operator, not by the previous step
    summary: str = ""

    def __post_init__(self):
        fan = (self.plan, self.unit, self.fan_in)
        if self.operator:
            return
        if self.run is not None and any(fan):
            raise ValueError(f"step {self.name}: either run or plan/unit/fan_in, not both")
        if self.run is None and not all(fan):
            raise ValueError(f"step {self.name}: a fan-out step needs plan, unit and fan_in")
        if self.run is None and self.unit_queue is None:
            raise ValueError(f"step {self.name}: a fan-out step names the queue of its units")

    @property
    def fans_out(self) -> bool:
        return self.plan is not None

    @property
    def task(self) -> str:
        """The Celery task that runs the step (what Flower shows)."""
        return f"migrator.{self.name}"

    @property
    def unit_task(self) -> str | None:
        return f"migrator.{self.name}_unit" if self.fans_out else None


def pace(ctx, done: int = 0, nbytes: int = 0) -> None:
    """After a checkpointed batch: obey the cells' health signals (migrator/moves/throttle.py)."""
    if ctx.pacer is not None:
        ctx.pacer.after_batch(done, nbytes)


def stream_pace(ctx):
    """``on_chunk`` for a COPY stream: holds it to a fraction of its full speed on "slow down"."""
    return None if ctx.pacer is None or not ctx.pacer.active else ctx.pacer.on_chunk


def batch_rows(ctx, configured: int) -> int:
    """Rows per batch for this execution: ``configured``, smaller when the cells' health says slow down."""
    return configured if ctx.pacer is None else ctx.pacer.batch_rows(configured)
