"""Generated gRPC code of the Topology Service (``python -m migrator.topology.generate``)."""
