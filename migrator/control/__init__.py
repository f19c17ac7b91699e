"""The control database: Topology Service data and move state. Schema managed by Alembic."""
