"""SQL derived from the dictionary and a live schema: chains, predicates, org-of-row, copy order, checks."""

from __future__ import annotations

import pytest

from migrator.cells.introspect import ColumnInfo, ForeignKeyInfo, LiveSchema, TableInfo
from migrator.dictionary import Dictionary
from migrator.dictionary.check import check_schema
from migrator.errors import DictionaryError
from tests.unit.dictionaries import ORGANIZATION_TABLES, UPLOADS


def table(name, columns, pk=("id",), fks=(), types=None):
    types = types or {}
    return TableInfo(
        name=name,
        columns=[ColumnInfo(c, types.get(c, "bigint"), c not in pk, position=i + 1) for i, c in enumerate(columns)],
        primary_key=list(pk),
        foreign_keys=[ForeignKeyInfo(list(cols), ref, list(ref_cols), "public", f"fk_{name}_{i}")
                      for i, (cols, ref, ref_cols) in enumerate(fks)],
    )


def live_of(*tables, schema="public"):
    return LiveSchema(schema=schema, tables={t.name: t for t in tables})


def orgs_dictionary(tables: dict) -> Dictionary:
    """A dictionary rooted at ``orgs`` with these tables besides it."""
    return Dictionary.from_mapping({"version": 1, "root": "orgs", "tables": {"orgs": {"root": True}, **tables}})


DICT = Dictionary.from_mapping({"version": 1, "root": "organizations", "tables": {
    **ORGANIZATION_TABLES,
    "label_links": {"sharding_key": {"label_id": "labels"}},
    **UPLOADS,
    "application_settings": {"classification": "cell_local"},
    "users": {"classification": "cluster_wide"},
}})

LIVE = live_of(
    table("organizations", ["id", "name"]),
    table("namespaces", ["id", "organization_id", "parent_id"],
          fks=[(["organization_id"], "organizations", ["id"]), (["parent_id"], "namespaces", ["id"])]),
    table("projects", ["id", "namespace_id"], fks=[(["namespace_id"], "namespaces", ["id"])]),
    table("notes", ["id", "project_id", "author_id"],
          fks=[(["project_id"], "projects", ["id"]), (["author_id"], "users", ["id"])]),
    table("labels", ["id", "project_id", "group_id"],
          fks=[(["project_id"], "projects", ["id"]), (["group_id"], "namespaces", ["id"])]),
    table("label_links", ["label_id", "target_type", "target_id"], pk=("label_id", "target_type", "target_id"),
          fks=[(["label_id"], "labels", ["id"])]),
    table("uploads", ["id", "project_id", "file_key", "sha256", "size"],  # no FK: parent's PK is used
          types={"file_key": "text", "sha256": "text"}),
    table("application_settings", ["id", "name"]),
    table("users", ["id", "username"]),
)


def render(composable) -> str:
    return composable.as_string(None)


# ---------------------------------------------------------------------------------- chains


def test_chain_of_root_direct_and_indirect_tables():
    assert DICT.chain("organizations") == [[]]
    assert DICT.chain("namespaces") == [[("namespaces", "organization_id", "organizations")]]
    assert DICT.chain("notes") == [[
        ("notes", "project_id", "projects"),
        ("projects", "namespace_id", "namespaces"),
        ("namespaces", "organization_id", "organizations"),
    ]]


def test_chain_with_alternatives_multiplies_paths():
    assert DICT.chain("labels") == [
        [("labels", "project_id", "projects"), ("projects", "namespace_id", "namespaces"),
         ("namespaces", "organization_id", "organizations")],
        [("labels", "group_id", "namespaces"), ("namespaces", "organization_id", "organizations")],
    ]
    paths = DICT.chain("label_links")
    assert len(paths) == 2 and all(p[0] == ("label_links", "label_id", "labels") for p in paths)


# ---------------------------------------------------------------------------------- predicates


def test_predicate_of_root_and_direct_key():
    assert render(DICT.org_predicate("organizations", LIVE)) == '"t"."id" = %(org)s'
    assert render(DICT.org_predicate("namespaces", LIVE)) == '"t"."organization_id" = %(org)s'
    assert render(DICT.org_predicate("namespaces", LIVE, alias="ns")) == '"ns"."organization_id" = %(org)s'


def test_predicate_of_indirect_key_walks_the_hops_with_fresh_aliases():
    assert render(DICT.org_predicate("notes", LIVE)) == (
        '"t"."project_id" IN (SELECT "h1"."id" FROM "public"."projects" AS "h1" WHERE '
        '"h1"."namespace_id" IN (SELECT "h2"."id" FROM "public"."namespaces" AS "h2" WHERE '
        '"h2"."organization_id" = %(org)s))'
    )


def test_predicate_alternatives_are_ored():
    assert render(DICT.org_predicate("labels", LIVE)) == (
        '("t"."project_id" IN (SELECT "h1"."id" FROM "public"."projects" AS "h1" WHERE '
        '"h1"."namespace_id" IN (SELECT "h2"."id" FROM "public"."namespaces" AS "h2" WHERE '
        '"h2"."organization_id" = %(org)s)) OR '
        '"t"."group_id" IN (SELECT "h3"."id" FROM "public"."namespaces" AS "h3" WHERE '
        '"h3"."organization_id" = %(org)s))'
    )


def test_predicate_aliases_never_shadow_the_callers_alias():
    text = render(DICT.org_predicate("notes", LIVE, alias="h1"))
    assert text.startswith('"h1"."project_id" IN (SELECT "h2"."id" FROM "public"."projects" AS "h2"')
    assert 'AS "h1"' not in text


def test_predicate_uses_the_foreign_keys_referenced_column():
    d = orgs_dictionary({
        "projects": {"sharding_key": {"org_id": "orgs"}},
        "events": {"sharding_key": {"project_code": "projects"}},
        "by_path": {"sharding_key": {"org_path": "orgs"}},
    })
    live = live_of(
        table("orgs", ["id", "path"]),
        table("projects", ["id", "code", "org_id"]),
        table("events", ["id", "project_code"], fks=[(["project_code"], "projects", ["code"])]),
        table("by_path", ["id", "org_path"], fks=[(["org_path"], "orgs", ["path"])]),
    )
    assert render(d.org_predicate("events", live)) == (
        '"t"."project_code" IN (SELECT "h1"."code" FROM "public"."projects" AS "h1" WHERE "h1"."org_id" = %(org)s)'
    )
    # a sharding key into the root through another column than its primary key
    assert render(d.org_predicate("by_path", live)) == (
        '"t"."org_path" IN (SELECT "h1"."path" FROM "public"."orgs" AS "h1" WHERE "h1"."id" = %(org)s)'
    )


def test_composite_fk_maps_the_column_to_its_referenced_column():
    d = orgs_dictionary({
        "parts": {"sharding_key": {"org_id": "orgs"}},
        "items": {"sharding_key": {"part_no": "parts"}},
    })
    live = live_of(
        table("orgs", ["id"]),
        table("parts", ["org_id", "no", "kind"], pk=("org_id", "no")),
        table("items", ["id", "part_org", "part_no"], fks=[(["part_org", "part_no"], "parts", ["org_id", "no"])]),
    )
    assert '"t"."part_no" IN (SELECT "h1"."no" FROM "public"."parts"' in render(d.org_predicate("items", live))


def test_composite_parent_key_without_fk_is_an_error_naming_table_and_column():
    d = orgs_dictionary({
        "parts": {"sharding_key": {"org_id": "orgs"}},
        "items": {"sharding_key": {"part_no": "parts"}},
    })
    live = live_of(table("orgs", ["id"]), table("parts", ["org_id", "no"], pk=("org_id", "no")),
                   table("items", ["id", "part_no"]))
    with pytest.raises(DictionaryError) as exc:
        d.org_predicate("items", live)
    assert "'items'" in exc.value.message and "'part_no'" in exc.value.message and "composite" not in exc.value.hint
    assert "(it has: org_id, no)" in exc.value.message


def test_predicate_errors_for_missing_tables_and_columns():
    live = live_of(*[t for n, t in LIVE.tables.items() if n != "projects"])
    with pytest.raises(DictionaryError, match="table 'projects' of the dictionary does not exist"):
        DICT.org_predicate("notes", live)
    broken = live_of(*[t for n, t in LIVE.tables.items() if n != "notes"], table("notes", ["id", "body"]))
    with pytest.raises(DictionaryError, match="'notes': sharding key column 'project_id' does not exist"):
        DICT.org_predicate("notes", broken)
    with pytest.raises(DictionaryError, match="cell_local"):
        DICT.org_predicate("application_settings", LIVE)


def test_predicate_qualifies_each_table_with_its_schema():
    assert '"public"."projects"' in render(DICT.org_predicate("notes", LIVE))
    # a table of another schema is named schema.table in the dictionary and the live schema
    d = orgs_dictionary({"app.projects": {"sharding_key": {"org_id": "orgs"}},
                         "tasks": {"sharding_key": {"project_id": "app.projects"}}})
    live = live_of(table("orgs", ["id"]), table("app.projects", ["id", "org_id"]),
                   table("tasks", ["id", "project_id"], fks=[(["project_id"], "app.projects", ["id"])]))
    assert check_schema(d, live) == []
    assert render(d.org_predicate("tasks", live)) == (
        '"t"."project_id" IN (SELECT "h1"."id" FROM "app"."projects" AS "h1" WHERE "h1"."org_id" = %(org)s)')
    assert d.copy_order(live) == ["orgs", "app.projects", "tasks"]


# ---------------------------------------------------------------------------------- org of a row


def test_org_of_row_direct_indirect_and_alternatives():
    assert render(DICT.org_of_row_sql("organizations", LIVE, "NEW")) == 'NEW."id"'
    assert render(DICT.org_of_row_sql("namespaces", LIVE, "OLD")) == 'OLD."organization_id"'
    assert render(DICT.org_of_row_sql("notes", LIVE, "NEW")) == (
        '(SELECT (SELECT "h2"."organization_id" FROM "public"."namespaces" AS "h2" '
        'WHERE "h2"."id" = "h1"."namespace_id") FROM "public"."projects" AS "h1" WHERE "h1"."id" = NEW."project_id")'
    )
    text = render(DICT.org_of_row_sql("labels", LIVE, "NEW"))
    assert text.startswith("COALESCE((SELECT (SELECT")
    assert text.endswith('(SELECT "h3"."organization_id" FROM "public"."namespaces" AS "h3" '
                         'WHERE "h3"."id" = NEW."group_id"))')


def test_org_of_row_refuses_odd_row_variables():
    with pytest.raises(ValueError):
        DICT.org_of_row_sql("notes", LIVE, "NEW; DROP TABLE x")


# ---------------------------------------------------------------------------------- copy order


def test_copy_order_parents_first_in_dictionary_order():
    assert DICT.copy_order(LIVE) == ["organizations", "namespaces", "projects", "notes", "labels", "label_links",
                                     "uploads"]


def test_copy_order_follows_foreign_keys_beyond_sharding_keys():
    d = Dictionary.from_mapping({"version": 1, "root": "orgs", "tables": {
        "notes": {"sharding_key": {"project_id": "projects"}},  # listed before its parents
        "issues": {"sharding_key": {"project_id": "projects"}},
        "projects": {"sharding_key": {"org_id": "orgs"}},
        "orgs": {"root": True},
        "misc": {"classification": "cell_local"},
    }})
    live = live_of(
        table("orgs", ["id"]),
        table("projects", ["id", "org_id", "parent_id"], fks=[(["parent_id"], "projects", ["id"])]),
        table("issues", ["id", "project_id"]),
        table("notes", ["id", "project_id", "issue_id", "misc_id"],
              fks=[(["issue_id"], "issues", ["id"]), (["misc_id"], "misc", ["id"])]),
        table("misc", ["id"]),
    )
    assert d.copy_order(live) == ["orgs", "projects", "issues", "notes"]


def test_copy_order_breaks_foreign_key_cycles_deterministically():
    d = orgs_dictionary({
        "a": {"sharding_key": {"org_id": "orgs"}},
        "b": {"sharding_key": {"org_id": "orgs"}},
        "c": {"sharding_key": {"a_id": "a"}},
    })
    live = live_of(
        table("orgs", ["id"]),
        table("a", ["id", "org_id", "b_id"], fks=[(["b_id"], "b", ["id"])]),
        table("b", ["id", "org_id", "a_id"], fks=[(["a_id"], "a", ["id"])]),
        table("c", ["id", "a_id"]),
    )
    first = d.copy_order(live)
    assert first == ["orgs", "a", "b", "c"]
    assert all(d.copy_order(live) == first for _ in range(5))


def test_copy_order_without_live_tables_uses_sharding_keys():
    assert DICT.copy_order(LiveSchema()) == DICT.org_tables()


# ---------------------------------------------------------------------------------- check (pure)


def test_check_clean_schema_has_no_problems():
    assert check_schema(DICT, LIVE) == []


def test_check_reports_every_kind_of_problem():
    d = Dictionary.from_mapping({"version": 1, "root": "organizations", "tables": {
        **{k: v for k, v in DICT.as_dict()["tables"].items()},
        "ghosts": {"sharding_key": {"project_id": "projects"}},
        "loops": {"sharding_key": {"loop_id": "loops"}},
    }}, strict=False)
    tables = dict(LIVE.tables)
    tables["uploads"] = table("uploads", ["id", "project_id", "file_key"])
    tables["notes"] = table("notes", ["id", "body"], pk=())
    tables["audit_events"] = table("audit_events", ["id"])
    tables["loops"] = table("loops", ["id", "loop_id"])
    tables["application_settings"] = table("application_settings", ["id", "org_id"],
                                           fks=[(["org_id"], "organizations", ["id"])])
    problems = check_schema(d, LiveSchema(tables=tables))
    found = {(p.kind, p.table, p.column) for p in problems}
    assert found == {
        ("unclassified", "audit_events", None),
        ("missing_table", "ghosts", None),
        ("missing_column", "notes", "project_id"),
        ("no_primary_key", "notes", None),
        ("missing_column", "uploads", "sha256"),
        ("missing_column", "uploads", "size"),
        ("broken_chain", "loops", "loop_id"),
        ("references_org_data", "application_settings", "org_id"),
    }
    unclassified = next(p for p in problems if p.kind == "unclassified")
    assert "audit_events" in unclassified.message
    assert "sharding_key" in unclassified.hint and "cell_local" in unclassified.hint
    assert all(p.hint for p in problems)
    assert problems == sorted(problems, key=lambda p: p.table)  # grouped by table


def test_check_reports_unresolvable_parent_key():
    d = orgs_dictionary({
        "parts": {"sharding_key": {"org_id": "orgs"}},
        "items": {"sharding_key": {"part_no": "parts"}},
    })
    live = live_of(table("orgs", ["id"]), table("parts", ["org_id", "no"], pk=("org_id", "no")),
                   table("items", ["id", "part_no"]))
    [problem] = check_schema(d, live)
    assert (problem.kind, problem.table, problem.column) == ("unresolved_key", "items", "part_no")


def _indexed(live, **columns):
    """A copy of ``live`` where each table named leads an index with each column given."""
    import copy

    out = copy.deepcopy(live)
    for name, cols in columns.items():
        out.tables[name].index_leads = set(cols)
    return out


INDEXED = _indexed(LIVE, namespaces=["organization_id"], projects=["namespace_id"], notes=["project_id"],
                   labels=["project_id", "group_id"], label_links=["label_id"])


def test_key_predicate_resolves_each_level_into_an_array():
    assert render(DICT.org_key_predicate("notes", INDEXED)) == (
        '"t"."project_id" = ANY(ARRAY(SELECT "h1"."id" FROM "public"."projects" AS "h1" WHERE '
        '"h1"."namespace_id" = ANY(ARRAY(SELECT "h2"."id" FROM "public"."namespaces" AS "h2" WHERE '
        '"h2"."organization_id" = %(org)s))))'
    )
    assert render(DICT.org_key_predicate("organizations", INDEXED)) == '"t"."id" = %(org)s'
    assert " OR " in render(DICT.org_key_predicate("labels", INDEXED))


def test_key_predicate_needs_an_index_on_every_hop():
    assert DICT.unindexed_keys("notes", INDEXED) == []
    no_projects_index = _indexed(INDEXED, projects=[])
    assert DICT.unindexed_keys("notes", no_projects_index) == [("projects", "namespace_id")]
    assert DICT.org_key_predicate("notes", no_projects_index) is None
    assert DICT.org_key_predicate("namespaces", no_projects_index) is not None
    # LIVE knows no index at all: every non-root table is found by a scan
    assert DICT.org_key_predicate("namespaces", LIVE) is None
    assert ("uploads", "project_id") in DICT.unindexed_keys("uploads", LIVE)


def test_advice_names_each_unindexed_column_once():
    from migrator.dictionary.check import UNINDEXED_KEY, check_advice

    advice = check_advice(DICT, _indexed(INDEXED, projects=[]))
    assert [(a.kind, a.table, a.column) for a in advice] == [(UNINDEXED_KEY, "projects", "namespace_id"),
                                                             (UNINDEXED_KEY, "uploads", "project_id")]
    assert "CREATE INDEX CONCURRENTLY ON projects (namespace_id)" in advice[0].hint
