"""The sample schema and its data dictionary describe the same tables."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import migrator

PACKAGE = Path(migrator.__file__).parent
SCHEMA = PACKAGE / "sample" / "schema.sql"
DICTIONARY = PACKAGE / "sample" / "dictionary.yaml"

CREATE_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:public\.)?\"?(\w+)\"?", re.I | re.M)


def _schema_tables() -> set[str]:
    text = re.sub(r"--[^\n]*", "", SCHEMA.read_text())
    return set(CREATE_TABLE.findall(text))


def _dictionary() -> dict:
    return yaml.safe_load(DICTIONARY.read_text())


def test_every_schema_table_is_in_the_dictionary_and_back():
    tables = _schema_tables()
    described = set(_dictionary()["tables"])
    assert len(tables) >= 14
    assert tables - described == set(), "tables in sample/schema.sql missing from sample/dictionary.yaml"
    assert described - tables == set(), "tables in sample/dictionary.yaml missing from sample/schema.sql"


def test_sharding_keys_and_blob_columns_exist_in_the_schema():
    text = SCHEMA.read_text()
    bodies = dict(re.findall(r"CREATE TABLE (\w+) \((.*?)\n\);", text, re.S))
    data = _dictionary()
    assert data["root"] == "organizations"
    for name, entry in data["tables"].items():
        assert entry.get("description"), f"{name} has no description"
        columns = set(re.findall(r"^\s+(\w+)\s", bodies[name], re.M))
        for column, parent in (entry.get("sharding_key") or {}).items():
            assert column in columns, f"{name}.{column} is not a column"
            assert parent in data["tables"], f"{name}.{column} leads to unknown table {parent}"
            assert re.search(rf"^\s+{column}\s+bigint NOT NULL REFERENCES {parent} \(id\) ON DELETE CASCADE",
                             bodies[name], re.M), f"{name}.{column} is not a cascading FK to {parent}"
        for column in (entry.get("blobs") or {}).values():
            assert column in columns, f"{name}.{column} (blob column) is not a column"


def test_classifications():
    tables = _dictionary()["tables"]
    assert tables["organizations"].get("root") is True
    assert tables["application_settings"]["classification"] == "cell_local"
    assert tables["users"]["classification"] == "cluster_wide"
    assert tables["ci_builds"]["sharding_key"] == {"pipeline_id": "ci_pipelines"}
    assert tables["label_links"]["sharding_key"] == {"label_id": "labels"}


def test_the_dictionary_loader_accepts_the_sample():
    from migrator.dictionary import load_dictionary
    from migrator.sample import SAMPLE_DICTIONARY_PATH

    dictionary = load_dictionary(SAMPLE_DICTIONARY_PATH)
    assert set(dictionary.tables) == _schema_tables()
    assert dictionary.tables["ci_builds"].blobs, "ci_builds declares its artifact blob columns"
