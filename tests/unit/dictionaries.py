"""Dictionary mappings shared by the dictionary's unit tests."""

# The sample application's chain: organizations -> namespaces -> projects -> notes, labels (two keys).
ORGANIZATION_TABLES = {
    "organizations": {"root": True},
    "namespaces": {"sharding_key": {"organization_id": "organizations"}},
    "projects": {"sharding_key": {"namespace_id": "namespaces"}},
    "notes": {"sharding_key": {"project_id": "projects"}},
    "labels": {"sharding_key": {"project_id": "projects", "group_id": "namespaces"}},
}
# A blob-bearing table of that chain.
UPLOADS = {"uploads": {"sharding_key": {"project_id": "projects"},
                       "blobs": {"key": "file_key", "checksum": "sha256", "size": "size"}}}
