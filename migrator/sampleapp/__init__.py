"""A small application per cell for the demo, the tests and the router benchmark (``migrator sample-app serve``).

It reads and writes one organization's notes in its own cell's database, as a real cell application
would behind the edge router; see :mod:`migrator.sampleapp.app`.
"""
