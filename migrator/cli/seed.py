"""``migrator seed``: fill a provisioned cell with sample organizations, rows and blobs.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import time

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from migrator.cli.common import CONFIG_OPTION, JSON_OPTION, console, err_console, handle_errors, print_json, settings


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@handle_errors
def seed_command(
    cell: str = typer.Option(..., "--cell", help="The cell to seed (a name under 'cells:' in the config)."),
    orgs: int = typer.Option(3, "--orgs", min=1, help="How many new organizations to add."),
    rows: int = typer.Option(
        10_000, "--rows", min=1, help="Rows per organization before skew (spread over every organization table)."
    ),
    blobs: int = typer.Option(
        20, "--blobs", min=0,
        help="Blobs per organization before skew: uploads, LFS objects, CI artifacts (at least 3 each; 0: none).",
    ),
    blob_bytes: int = typer.Option(4096, "--blob-bytes", min=1, help="Approximate size of each blob in bytes."),
    no_skew: bool = typer.Option(
        False, "--no-skew",
        help="Give every organization exactly --rows rows (default: a Zipf-like mix, biggest first).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed, for reproducible blob contents and values."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Add sample organizations to a cell: rows in every organization table, blobs in its store.

    The cell must be provisioned first (`migrator cells init`).

    Rows are generated inside PostgreSQL from the cell's own sequences, so ids sit in the cell's ID range.

    Each new organization is registered with the Topology Service. Running it again adds more organizations.

    Example: migrator seed --cell cell-1 --orgs 5 --rows 100000 --seed 7
    """
    from migrator.sample.seed import plan_org_sizes, seed_organizations

    cfg = settings(config)
    total = sum(plan_org_sizes(orgs, max(rows, 1), skew=not no_skew))
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=err_console,
        transient=json_output,
    ) as bar:
        task = bar.add_task(f"seeding {cell}", total=total)

        def progress(description: str, advance: int) -> None:
            bar.update(task, description=description, advance=advance)

        seeded = seed_organizations(
            cfg, cell, orgs=orgs, rows=rows, blobs=blobs, blob_bytes=blob_bytes, skew=not no_skew, seed=seed,
            progress=progress,
        )
        bar.update(task, description=f"seeded {cell}", completed=total)
    elapsed = time.monotonic() - started

    if json_output:
        print_json({"cell": cell, "elapsed_s": round(elapsed, 2), "organizations": [o.as_dict() for o in seeded]})
        return
    table = Table("organization", "cell", "rows", "largest tables", "blobs", "blob bytes",
                  title=f"Seeded {len(seeded)} organization(s) in {cell} in {elapsed:.1f}s")
    for org in seeded:
        largest = sorted(org.rows_by_table.items(), key=lambda kv: -kv[1])[:3]
        table.add_row(str(org.organization_id), org.cell, f"{org.rows:,}",
                      ", ".join(f"{name} {count:,}" for name, count in largest),
                      str(org.blobs), _human_bytes(org.blob_bytes))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("seed")(seed_command)
