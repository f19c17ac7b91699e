"""The verifier: row counts and order-independent checksums computed inside PostgreSQL."""
