"""``migrator broker``: the broker as the workers see it (queue names from the config, lengths from Redis).

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import typer

from migrator.cli.common import CONFIG_OPTION, JSON_OPTION, App, console, handle_errors, print_json, settings


def register(app: typer.Typer) -> None:
    group = App(help="The Celery broker: the queues the workers consume and what waits on them.",
                no_args_is_help=True)

    @group.command("queues")
    @handle_errors
    def queues_cmd(as_json: bool = JSON_OPTION, config: str = CONFIG_OPTION):
        """Each queue the workers consume (celery.queue_prefix included) with its length in the broker.

        waiting: messages no worker has taken yet.

        unacked: taken by a worker, not acknowledged (prefetched or running; back on their queue after
        celery.visibility_timeout_s if the worker died).

        Reads the broker as the workers do (kombu's Redis transport): every broker_url they take
        (redis://, rediss://, redis+socket://), their key names, priority sub-queues counted in.
        The title says how long the Redis server has been up: a young one restarted.
        Exit 1 with an error and a hint when the broker does not answer."""
        from migrator.broker import queue_depths
        from migrator.cli.render import ago, key_column, list_table, short_column
        from migrator.dsn import mask_dsn

        s = settings(config)
        found = queue_depths(s)
        if as_json:
            print_json({"broker_url": mask_dsn(s.broker_url), "uptime_s": found.uptime_s,
                        "queues": [d.as_dict() for d in found.queues]})
            return
        up = "" if found.uptime_s is None else f" (up {ago(found.uptime_s).removesuffix(' ago')})"
        table = list_table(f"broker {mask_dsn(s.broker_url)}{up}")
        key_column(table, "queue")
        short_column(table, "kind")
        key_column(table, "waiting", justify="right")
        key_column(table, "unacked", justify="right")
        for d in found.queues:
            table.add_row(d.name, d.kind, str(d.messages), str(d.unacked))
        console.print(table)

    app.add_typer(group, name="broker")
