"""Running a fleet on one machine: the processes, databases, ports, certificates and config file that the
demo (``migrator/demo/``), the test suite (``tests/``) and the benchmarks (``benchmarks/``) all use.

- ``processes``: start a child in its own process group with its output in a log file, find it again
  by pid and start time, stop it with everything in its group; ``free_port``, ``wait_for``.
- ``databases``: throwaway PostgreSQL databases with unique names on an admin connection.
- ``config``: a fleet's ``migrator.yaml`` (cells, blob stores, the Topology Service with mutual TLS).
- ``services``: a private ``redis-server``, ``migrator topology serve``, ``celery -A tasks worker``.
- ``local``: :class:`~migrator.fleet.local.LocalFleet`, a control database and N cells on one
  PostgreSQL server, with those services started on demand.
"""
