"""Artifact store: content-addressed, atomic, schema-checked artifacts plus a DuckDB catalog.

``Store.materialize(spec, config, inputs, compute)`` returns the artifact for a stage run, computing
it only when no artifact with the same key exists. See ``storage.store`` for the write protocol,
``storage.integrity`` for the file records every read checks and ``storage.catalog`` for the SQL views
and the read-only SQL door.
"""

from .artifact import Artifact, Workspace
from .catalog import SqlRefused, format_table, query, refresh_catalog
from .integrity import CorruptArtifact
from .keys import StageSpec, artifact_key, canonical_json
from .store import Store

__all__ = [
    "Artifact", "CorruptArtifact", "SqlRefused", "StageSpec", "Store", "Workspace", "artifact_key",
    "canonical_json", "format_table", "query", "refresh_catalog",
]
