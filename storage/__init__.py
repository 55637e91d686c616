"""Artifact store: content-addressed, atomic, schema-checked artifacts plus a DuckDB catalog.

``Store.materialize(spec, config, inputs, compute)`` returns the artifact for a stage run, computing
it only when no artifact with the same key exists. See ``storage.store`` for the write protocol and
``storage.catalog`` for the SQL views.
"""

from .artifact import Artifact, Workspace
from .catalog import format_table, query, refresh_catalog
from .keys import StageSpec, artifact_key, canonical_json
from .store import Store

__all__ = [
    "Artifact", "StageSpec", "Store", "Workspace", "artifact_key", "canonical_json", "format_table",
    "query", "refresh_catalog",
]
