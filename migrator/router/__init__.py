"""The edge router: HAProxy in front of the cells, kept in step with the Topology Service.

- :mod:`~migrator.router.haproxy_config`: ``migrator router config``, HAProxy's configuration from ours.
- :mod:`~migrator.router.admin`: HAProxy's admin socket (``set map``, ``add map``, ``del map``, atomic
  replacement of a whole map with ``prepare``/``commit``).
- :mod:`~migrator.router.maps`: the two maps (organization -> cell, frozen organizations) and their files.
- :mod:`~migrator.router.sync`: ``migrator router sync``, following the route stream into every HAProxy.

Design and failure modes: docs/adr/0018-edge-router.md; a router out of sync:
docs/runbooks/alert-router-sync-lagging.md.
"""
