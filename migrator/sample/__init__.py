"""The sample application the migrator ships with: its schema (``schema.sql``), its data dictionary
(``dictionary.yaml``, the default ``dictionary_path``), the seeder of sample organizations
(``seed.py``, ``migrator seed``) and the application of a cell behind the edge router (``app.py``,
``migrator sample-app serve``). Used by the demo, the quickstart, the tests and the benchmarks; a real
fleet brings its own schema and dictionary (docs/adopting-an-existing-fleet.md)."""

from pathlib import Path

HERE = Path(__file__).parent
SAMPLE_SCHEMA_PATH = HERE / "schema.sql"
SAMPLE_DICTIONARY_PATH = HERE / "dictionary.yaml"
SAMPLE_ROOT_TABLE = "organizations"
