"""Arrow schemas, one per table, plus row validation.

Every table a stage writes or reads is checked against its schema here, so a malformed row is a
one-line error naming the table, row and field instead of a confusing failure three stages later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class TableSchema:
    """A named Arrow schema with the columns that must never be null and a primary key."""

    name: str
    schema: pa.Schema
    required: tuple[str, ...] = ()
    """Columns that may not hold nulls (in addition to the schema's non-nullable fields)."""
    key: tuple[str, ...] = ()
    """Columns that must be unique together (empty: no uniqueness check)."""

    def fingerprint(self) -> str:
        """A short hash of the schema, part of every cache key that reads or writes this table."""
        return hashlib.sha256(self.schema.to_string().encode()).hexdigest()[:16]

    def empty(self) -> pa.Table:
        return self.schema.empty_table()


class SchemaError(ValueError):
    """A table does not conform to its schema; the message names the table, row and field."""


def _f(name: str, typ: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable)


S = pa.string()
EXAMPLES = TableSchema(
    "examples",
    pa.schema([
        _f("id", S, False),
        _f("dataset", S, False),
        _f("split", S, False),  # train | validation | test
        _f("family", S, False),  # mcqa | code | math | tool | free
        _f("prompt", S, False),  # the student prompt x (user turn, no chat template)
        _f("reference", S, False),  # gold answer as the teacher sees it (code, letter, number, ReAct)
        _f("rationale", S),  # explanation / chain of thought, when the dataset has one
        _f("options", pa.list_(S)),  # MCQA options in letter order
        _f("answer", S, False),  # canonical answer the scorer compares with (letter, number, ...)
        _f("tests", S),  # code: test program run after the candidate; tool: gold JSON steps
        _f("meta", S),  # JSON object with dataset-specific extras (entry_point, subject, ...)
    ]),
    key=("id",),
)

PREDICTIONS = TableSchema(
    "predictions",
    pa.schema([
        _f("id", S, False),
        _f("dataset", S, False),
        _f("model", S, False),
        _f("method", S, False),
        _f("sample", pa.int32(), False),
        _f("prompt_tokens", pa.int32(), False),
        _f("completion_tokens", pa.int32()),  # generated tokens, the stop token excluded (null: not counted)
        _f("completion", S, False),
        _f("extracted", S),
        _f("correct", pa.bool_(), False),
        _f("score", pa.float64(), False),
        _f("latency", pa.float64(), False),  # seconds of generation attributed to this row
        _f("truncated", pa.bool_(), False),  # completion hit max_new_tokens without EOS
        _f("detail", S),  # JSON: scorer details (sandbox status, per-metric values)
        _f("seed", pa.int64()),  # training seed of the evaluated checkpoint (null: the base model)
        _f("trained_on", S),  # dataset the checkpoint was trained on (null: the base model)
    ]),
    key=("id", "sample"),
)

SCORES = TableSchema(
    "scores",
    pa.schema([
        _f("dataset", S, False),
        _f("model", S, False),
        _f("method", S, False),
        _f("metric", S, False),
        _f("value", pa.float64(), False),
        _f("n", pa.int64(), False),
        _f("stderr", pa.float64()),
        _f("seed", pa.int64()),  # training seed of the evaluated checkpoint (null: the base model)
        _f("trained_on", S),  # dataset the checkpoint was trained on (null: the base model)
        _f("split", S),  # the examples split these numbers come from (test, validation, ...)
        _f("eval_limit", pa.int64()),  # evaluate.limit of the run (null: every example of the split)
        _f("precision", S),  # dtype of the evaluated weights (float32, bfloat16) as resolved on the device
    ]),
    key=("dataset", "metric"),
)

NEIGHBORS = TableSchema(
    "neighbors",
    pa.schema([
        _f("id", S, False),
        _f("rank", pa.int32(), False),
        _f("neighbor_id", S, False),
        _f("score", pa.float64(), False),
    ]),
    key=("id", "rank"),
)

INSTRUCTIONS = TableSchema(
    "instructions",
    pa.schema([
        _f("dataset", S, False),
        _f("instruction_id", pa.int32(), False),
        _f("text", S, False),
        _f("demo_ids", pa.list_(S)),
        _f("model", S, False),
    ]),
    key=("dataset", "instruction_id"),
)

CONTEXTS = TableSchema(
    "contexts",
    pa.schema([
        _f("id", S, False),
        _f("view", S, False),  # privileged | aux_<k> | negative_<j>
        _f("strategy", S, False),  # privileged | random | retrieval | induction | negative
        _f("text", S, False),
    ]),
    key=("id", "view"),
)

NEGATIVES = TableSchema(
    "negatives",
    pa.schema([
        _f("id", S, False),
        _f("neg_id", pa.int32(), False),
        _f("source", S, False),  # llm | wordnet | corrupt
        _f("text", S, False),
        _f("wrong_answer", S),
        _f("verified_wrong", pa.bool_()),  # null: could not be verified
    ]),
    key=("id", "neg_id"),
)

TRAIN_STEPS = TableSchema(
    "train_steps",
    pa.schema([
        _f("step", pa.int64(), False),
        _f("method", S, False),
        _f("dataset", S),  # the dataset trained on (filled by the pipeline)
        _f("metrics", pa.map_(S, pa.float64())),
        _f("loss", pa.float64(), False),
        _f("lr", pa.float64(), False),
        _f("tokens_per_s", pa.float64()),
        _f("step_seconds", pa.float64()),
        _f("peak_mem_mb", pa.float64()),
    ]),
    key=("step",),
)

ROLLOUTS = TableSchema(
    "rollouts",
    pa.schema([
        _f("step", pa.int64(), False),
        _f("method", S),
        _f("dataset", S),
        _f("id", S, False),
        _f("completion", S, False),
        _f("num_tokens", pa.int32(), False),
        _f("truncated", pa.bool_(), False),
    ]),
)

RETENTION = TableSchema(
    "retention",
    pa.schema([
        _f("id", S, False),
        _f("dataset", S, False),  # the evaluated dataset
        _f("model", S),  # the base model's label
        _f("method", S, False),
        _f("seed", pa.int64()),  # null: the base model
        _f("trained_on", S),  # null: the base model
        _f("ppl_fit", pa.float64()),  # exp(−mean log p_adapted(gold | x)); null without a gold completion
        _f("ppl_ret", pa.float64(), False),  # exp(−base_logp): the adapted completion under the base model
        _f("base_logp", pa.float64(), False),  # mean per-token log p_base(y_adapted | x)
        _f("jsd", pa.float64(), False),  # mean per-token JSD(base ‖ adapted) on the adapted completion, ≤ ln 2
        _f("num_tokens", pa.int32(), False),  # scored completion tokens
    ]),
    key=("id", "method", "seed"),
)

COMPARISONS = TableSchema(
    "comparisons",
    pa.schema([
        _f("dataset", S, False),  # a dataset column label (`a→b` for a transfer pair)
        _f("model", S),  # the base model's label
        _f("method", S, False),
        _f("baseline", S, False),  # the method compared against (sft, base, ...)
        _f("statistic", S, False),  # accuracy_diff | jsd_lower | base_logp_higher | ...
        _f("value", pa.float64(), False),
        _f("ci_low", pa.float64()),
        _f("ci_high", pa.float64()),
        _f("p_value", pa.float64()),
        _f("n", pa.int64(), False),  # paired examples (× seeds) behind the value
    ]),
    key=("dataset", "method", "baseline", "statistic"),
)

SIGNALS = TableSchema(
    "signals",
    pa.schema([
        _f("dataset", S, False),
        _f("model", S, False),  # the model's label (student, and teacher on the privileged prompt)
        _f("statistic", S, False),  # logp_gold_gain | acc_teacher_ref | divergence_own_samples | ... (stages.signals)
        _f("value", pa.float64(), False),  # mean over the items behind it
        _f("ci_low", pa.float64()),  # Student-t interval of that mean over items (null: one item)
        _f("ci_high", pa.float64()),
        _f("n", pa.int64(), False),  # items behind the value
        _f("split", S, False),  # the examples split the items come from (train: signals never read test)
    ]),
    key=("dataset", "model", "statistic"),
)

CALIBRATION = TableSchema(
    "calibration",
    pa.schema([
        _f("dataset", S, False),  # the dataset the methods trained on and were scored on (validation split)
        _f("method", S, False),  # a method preset, or base (the untouched model, for reference)
        _f("point", S, False),  # the grid point, "lr=0.0003,steps=16" ("" for base)
        _f("metric", S, False),  # the dataset's primary metric (accuracy, pass@1, ...)
        _f("value", pa.float64(), False),  # mean over the calibration seeds
        _f("seeds", pa.int64(), False),  # calibration seeds behind the mean
        _f("n", pa.int64(), False),  # validation examples per seed
        _f("chosen", pa.bool_(), False),  # the method's chosen point (highest mean; ties: first in the grid)
        _f("split", S, False),  # always validation: calibration never reads the test split
    ]),
    key=("dataset", "method", "point"),
)

ALL: dict[str, TableSchema] = {
    t.name: t
    for t in (EXAMPLES, PREDICTIONS, SCORES, NEIGHBORS, INSTRUCTIONS, CONTEXTS, NEGATIVES,
              TRAIN_STEPS, ROLLOUTS, RETENTION, COMPARISONS, SIGNALS, CALIBRATION)
}


def conform(table: pa.Table | list[dict], ts: TableSchema) -> pa.Table:
    """Return ``table`` cast to ``ts`` (columns reordered, extra columns rejected) or raise SchemaError."""
    if isinstance(table, list):
        return _from_rows(table, ts)
    names = set(table.column_names)
    missing = [f.name for f in ts.schema if f.name not in names and not f.nullable]
    if missing:
        raise SchemaError(f"table {ts.name}: missing column(s) {', '.join(missing)}")
    extra = sorted(names - set(ts.schema.names))
    if extra:
        raise SchemaError(f"table {ts.name}: unknown column(s) {', '.join(extra)}")
    cols = []
    for f in ts.schema:
        if f.name in names:
            col = table.column(f.name)
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaError(f"table {ts.name}: column {f.name!r} cannot be {f.type}: {e}") from None
        else:
            col = pa.nulls(table.num_rows, f.type)
        cols.append(col)
    out = pa.Table.from_arrays(cols, schema=ts.schema.remove_metadata()) if cols else ts.empty()
    validate(out, ts)
    return out


def _from_rows(rows: list[dict], ts: TableSchema) -> pa.Table:
    allowed = set(ts.schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - allowed
        if extra:
            raise SchemaError(f"table {ts.name}, row {i}: unknown field(s) {', '.join(sorted(extra))}")
        for f in ts.schema:
            if not f.nullable and row.get(f.name) is None:
                raise SchemaError(f"table {ts.name}, row {i}: field {f.name!r} is missing or null")
    try:
        table = pa.Table.from_pylist(rows, schema=ts.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise SchemaError(f"table {ts.name}: {e}") from None
    validate(table, ts)
    return table


def validate(table: pa.Table, ts: TableSchema) -> None:
    """Check nulls in non-nullable/required columns and key uniqueness; raise SchemaError naming the row."""
    if table.schema.remove_metadata() != ts.schema.remove_metadata():
        raise SchemaError(f"table {ts.name}: schema mismatch:\n{table.schema}\n!=\n{ts.schema}")
    for f in ts.schema:
        if (not f.nullable or f.name in ts.required) and table.column(f.name).null_count:
            col = table.column(f.name).to_pylist()
            row = col.index(None)
            raise SchemaError(f"table {ts.name}, row {row}: field {f.name!r} is null")
    if ts.key and table.num_rows:
        seen: set[tuple] = set()
        cols = [table.column(k).to_pylist() for k in ts.key]
        for i, key in enumerate(zip(*cols)):
            if key in seen:
                raise SchemaError(f"table {ts.name}, row {i}: duplicate key {dict(zip(ts.key, key))}")
            seen.add(key)
