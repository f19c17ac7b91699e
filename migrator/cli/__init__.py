"""The ``migrator`` command line."""
