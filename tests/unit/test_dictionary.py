"""The data dictionary file: loading, defaults and validation errors that name the table and key."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from migrator.dictionary import (
    CELL_LOCAL,
    CLUSTER_WIDE,
    ORGANIZATION,
    BlobSpec,
    Dictionary,
    load_dictionary,
)
from migrator.errors import DictionaryError
from migrator.sample import SAMPLE_DICTIONARY_PATH
from tests.unit.dictionaries import ORGANIZATION_TABLES, UPLOADS

# A dictionary file's head: the root table ``orgs``; a test's tables follow (indented 10).
ORGS_YAML = """
        version: 1
        root: orgs
        tables:
          orgs: {root: true}"""

BASE = {
    "version": 1,
    "root": "organizations",
    "tables": {
        **ORGANIZATION_TABLES,
        **UPLOADS,
        "ci_pipelines": {"sharding_key": {"project_id": "projects"}},
        "ci_builds": {"sharding_key": {"pipeline_id": "ci_pipelines"},
                      "blobs": [{"key": "artifact_key", "checksum": "artifact_sha256"}]},
        "application_settings": {"classification": "cell_local"},
        "users": {"classification": "cluster_wide", "description": "accounts", "owner": "team-auth"},
    },
}


def with_table(name, entry, base=BASE):
    data = yaml.safe_load(yaml.safe_dump(base, sort_keys=False))
    data["tables"][name] = entry
    return data


def write(tmp_path, text: str):
    path = tmp_path / "dictionary.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------- loading


def test_sample_dictionary_loads_and_classifies_every_table():
    d = load_dictionary(SAMPLE_DICTIONARY_PATH)
    assert d.root_table == "organizations"
    assert d.org_tables()[0] == "organizations"
    assert set(d.org_tables()) == {
        "organizations", "namespaces", "projects", "issues", "merge_requests", "notes", "labels", "label_links",
        "uploads", "lfs_objects", "ci_pipelines", "ci_builds",
    }
    assert d.blob_tables() == ["uploads", "lfs_objects", "ci_builds"]
    assert d.classification("application_settings") == CELL_LOCAL
    assert d.classification("users") == CLUSTER_WIDE
    assert d.tables["ci_builds"].blobs == (BlobSpec("artifact_key", "artifact_sha256", "artifact_size"),)
    assert d.chain_problems() == []
    for table in d.org_tables():
        paths = d.chain(table)
        assert paths and all(not p or p[-1][2] == "organizations" for p in paths)


def test_model_fields_and_defaults():
    d = Dictionary.from_mapping(BASE)
    root = d.tables["organizations"]
    assert root.root and root.classification == ORGANIZATION and root.sharding_key == {} and root.blobs == ()
    ns = d.tables["namespaces"]
    assert ns.classification == ORGANIZATION and not ns.root
    assert ns.sharding_key == {"organization_id": "organizations"}
    assert d.tables["uploads"].blobs == (BlobSpec("file_key", "sha256", "size"),)
    assert d.tables["ci_builds"].blobs == (BlobSpec("artifact_key", "artifact_sha256", None),)
    assert d.tables["ci_builds"].blobs[0].columns() == ("artifact_key", "artifact_sha256")
    assert d.tables["users"].description == "accounts" and d.tables["users"].owner == "team-auth"
    assert d.org_tables() == ["organizations", "namespaces", "projects", "notes", "labels", "uploads",
                              "ci_pipelines", "ci_builds"]
    assert d.blob_tables() == ["uploads", "ci_builds"]
    assert d.tables_of(CELL_LOCAL) == ["application_settings"]


def test_as_dict_round_trips():
    d = Dictionary.from_mapping(BASE)
    again = Dictionary.from_mapping(d.as_dict())
    assert again.tables == d.tables and again.root_table == d.root_table


def test_root_is_inferred_from_the_flagged_table():
    data = yaml.safe_load(yaml.safe_dump(BASE))
    del data["root"]
    assert Dictionary.from_mapping(data).root_table == "organizations"


def test_top_level_root_flags_its_table():
    data = with_table("organizations", {"description": "tenants", "classification": "organization"})
    d = Dictionary.from_mapping(data)
    assert d.tables["organizations"].root


def test_load_from_file(tmp_path):
    path = write(tmp_path, ORGS_YAML + """
          things: {sharding_key: {org_id: orgs}}
    """)
    d = load_dictionary(path)
    assert d.org_tables() == ["orgs", "things"]
    assert d.source == str(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DictionaryError) as exc:
        load_dictionary(tmp_path / "nope.yaml")
    assert "nope.yaml" in exc.value.message and "dictionary_path" in exc.value.hint


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "tables: {a: [\n")
    with pytest.raises(DictionaryError, match="not valid YAML"):
        load_dictionary(path)


def test_duplicate_table_is_refused(tmp_path):
    path = write(tmp_path, ORGS_YAML + """
          things: {sharding_key: {org_id: orgs}}
          things: {classification: cell_local}
    """)
    with pytest.raises(DictionaryError, match=r"duplicate key 'things' at line 7"):
        load_dictionary(path)


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_table("notes", {"sharding_key": {"project_id": "projects"}, "shard": 1}),
         "table 'notes', key 'shard': is not a known key"),
        (with_table("notes", {"classification": "tenant"}),
         "table 'notes', key 'classification': 'tenant' is not one of"),
        (with_table("notes", {"classification": "cell_local", "sharding_key": {"project_id": "projects"}}),
         "table 'notes', key 'sharding_key': a cell_local table holds no organization's rows"),
        (with_table("notes", {"classification": "cluster_wide", "blobs": {"key": "k", "checksum": "c"}}),
         "table 'notes', key 'blobs': a cluster_wide table"),
        (with_table("notes", {"classification": "organization"}),
         "table 'notes', key 'sharding_key': an organization-scoped table needs a sharding_key"),
        ({**BASE, "tables": {**BASE["tables"], "notes": None}},
         "table 'notes': needs a classification"),
        (with_table("notes", {"sharding_key": {}}), "table 'notes', key 'sharding_key': must be a non-empty mapping"),
        (with_table("notes", {"sharding_key": ["project_id"]}), "table 'notes', key 'sharding_key'"),
        (with_table("notes", {"sharding_key": {"project_id": 3}}),
         "table 'notes', key 'sharding_key.project_id': must be a non-empty string"),
        (with_table("uploads", {"sharding_key": {"project_id": "projects"}, "blobs": {"checksum": "c"}}),
         "table 'uploads', key 'blobs': needs exactly one of key"),
        (with_table("uploads", {"sharding_key": {"project_id": "projects"},
                                "blobs": {"key": "k", "key_sql": "'a/' || id", "checksum": "c"}}),
         "table 'uploads', key 'blobs': needs exactly one of key"),
        (with_table("uploads", {"sharding_key": {"project_id": "projects"},
                                "blobs": {"key": "k", "checksum": "c", "algorithm": "crc32"}}),
         "table 'uploads', key 'blobs'.algorithm: 'crc32' is not a checksum algorithm the copier computes"),
        (with_table("uploads", {"sharding_key": {"project_id": "projects"},
                                "blobs": {"key": "k", "checksum": "c", "encoding": "bytea"}}),
         "table 'uploads', key 'blobs'.encoding: 'bytea' is not one of hex, raw, base64"),
        (with_table("uploads", {"sharding_key": {"project_id": "projects"}, "blobs": {"key": "k", "algorithm": "md5"}}),
         "table 'uploads', key 'blobs'.algorithm: describes the checksum column, and there is none"),
        (with_table("uploads", {"sharding_key": {"project_id": "projects"},
                                "blobs": [{"key_sql": "'a/' || id"}, {"key_sql": "'b/' || id"}]}),
         "table 'uploads', key 'blobs'[1]: a second blob named 'key_sql'"),
        (with_table("uploads", {"sharding_key": {"project_id": "projects"},
                                "blobs": {"key": "k", "name": "x"}}),
         "table 'uploads', key 'blobs'.name: names a computed key"),
        (with_table("uploads", {"sharding_key": {"project_id": "projects"},
                                "blobs": [{"key": "k", "checksum": "c", "bytes": "b"}]}),
         "table 'uploads', key 'blobs'[0].bytes: is not a known key"),
        (with_table("uploads", {"sharding_key": {"project_id": "projects"}, "blobs": "file_key"}),
         "table 'uploads', key 'blobs': must be a mapping"),
        (with_table("notes", {"sharding_key": {"project_id": "projects"}, "root": "yes"}),
         "table 'notes', key 'root': must be true or false"),
        (with_table("notes", {"sharding_key": {"project_id": "projects"}, "owner": 5}),
         "table 'notes', key 'owner': must be a non-empty string"),
        (with_table("tenants", {"root": True}), "table 'tenants', key 'root': only one root table"),
        (with_table("organizations", {"root": True, "sharding_key": {"x": "namespaces"}}),
         "table 'organizations', key 'sharding_key': the root table has no sharding key"),
        (with_table("organizations", {"root": True, "classification": "cell_local"}),
         "table 'organizations', key 'root': the root table cannot be cell_local"),
        ({**BASE, "root": "tenants"}, "key 'root': names table 'tenants', which is not under 'tables'"),
        ({**BASE, "version": 2}, "key 'version': 2 is not supported"),
        ({**BASE, "tables": {}}, "key 'tables': is required"),
        ({**BASE, "colour": "blue"}, "key 'colour': is not a known key"),
        ([1, 2], "(top level): must be a mapping"),
    ],
)
def test_validation_errors_name_table_and_key(data, expected):
    with pytest.raises(DictionaryError) as exc:
        Dictionary.from_mapping(data, source="dict.yaml")
    assert expected in exc.value.message
    assert exc.value.message.startswith("dict.yaml: ")
    assert exc.value.hint


@pytest.mark.parametrize(
    ("table", "entry", "expected"),
    [
        ("notes", {"sharding_key": {"project_id": "projectz"}},
         "table 'notes', sharding_key 'project_id': parent table 'projectz' is not in the dictionary"),
        ("notes", {"sharding_key": {"setting_id": "application_settings"}},
         "parent table 'application_settings' is cell_local, not organization data"),
        ("notes", {"sharding_key": {"parent_id": "notes"}}, "cycle (notes -> notes)"),
    ],
)
def test_broken_chains_are_refused_when_strict(table, entry, expected):
    data = with_table(table, entry)
    with pytest.raises(DictionaryError) as exc:
        Dictionary.from_mapping(data)
    assert expected in exc.value.message
    lenient = Dictionary.from_mapping(data, strict=False)
    problems = lenient.chain_problems()
    assert [(p.table, p.column) for p in problems] == [(table, next(iter(entry["sharding_key"])))]
    with pytest.raises(DictionaryError, match=f"table '{table}'"):
        lenient.chain(table)


def test_cycle_between_two_tables_reports_both():
    data = with_table("a", {"sharding_key": {"b_id": "b"}})
    data["tables"]["b"] = {"sharding_key": {"a_id": "a"}}
    d = Dictionary.from_mapping(data, strict=False)
    problems = {(p.table, p.column): p.message for p in d.chain_problems()}
    assert set(problems) == {("a", "b_id"), ("b", "a_id")}
    assert "cycle (a -> b -> a)" in problems[("a", "b_id")]
    # a table below the cycle is broken further up
    data["tables"]["c"] = {"sharding_key": {"a_id": "a"}}
    d = Dictionary.from_mapping(data, strict=False)
    assert any(p.table == "c" and "broken further up" in p.message for p in d.chain_problems())


def test_strict_load_from_file_reports_first_chain_problem_and_count(tmp_path):
    path = write(tmp_path, ORGS_YAML + """
          a: {sharding_key: {x_id: nowhere}}
          b: {sharding_key: {y_id: elsewhere}}
    """)
    with pytest.raises(DictionaryError, match=r"table 'a', sharding_key 'x_id'.*\(and 1 more\)"):
        load_dictionary(path)
    assert len(load_dictionary(path, strict=False).chain_problems()) == 2


def test_lookups_of_unknown_or_non_org_tables():
    d = Dictionary.from_mapping(BASE)
    with pytest.raises(DictionaryError, match="'nope' is not in the data dictionary"):
        d.entry("nope")
    with pytest.raises(DictionaryError, match="'users' is cluster_wide"):
        d.chain("users")
