"""Ingest stage: bundled sources (HumanEval, MedMCQA sample, reasoning-gym), splits, determinism, leaks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import schemas
from stages.ingest import IngestConfig, run
from stages.ingest.formats import normalise

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datasets"
EVALS_SAMPLE = Path("/tmp/evalsdl/evals/registry/data/medmcqa/samples.jsonl")


def examples(tmp: Path | str = ".", **kw) -> pa.Table:
    return run(IngestConfig(**kw), Path(tmp))["examples"]


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def splits_of(table: pa.Table) -> dict[str, str]:
    return dict(zip(table.column("id").to_pylist(), table.column("split").to_pylist(), strict=True))


def assert_no_leak(table: pa.Table) -> None:
    seen_id: dict[str, str] = {}
    seen_prompt: dict[str, str] = {}
    for row in table.select(["id", "split", "prompt"]).to_pylist():
        assert seen_id.setdefault(row["id"], row["split"]) == row["split"], row["id"]
        key = normalise(row["prompt"])
        assert seen_prompt.setdefault(key, row["split"]) == row["split"], row["id"]


def failing_programs(programs: list[str]) -> list[int]:
    """Indices of programs that raise, each run in a fresh namespace in a separate interpreter."""
    script = (
        "import json, sys\n"
        "bad = []\n"
        "for i, src in enumerate(json.load(sys.stdin)):\n"
        "    try:\n"
        "        exec(compile(src, f'<program {i}>', 'exec'), {'__name__': '__main__'})\n"
        "    except BaseException:\n"
        "        bad.append(i)\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], input=json.dumps(programs), capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def medmcqa_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not EVALS_SAMPLE.exists():
        pytest.skip(f"MedMCQA sample from the evals wheel not found at {EVALS_SAMPLE}")
    cache = tmp_path_factory.mktemp("cache")
    (cache / "medmcqa").mkdir()
    shutil.copy(EVALS_SAMPLE, cache / "medmcqa" / "samples.jsonl")
    return cache


# --- bundled sources -------------------------------------------------------------------------------

def test_bundled_humaneval_has_all_problems_and_runnable_tests() -> None:
    table = examples(dataset="humaneval")
    assert table.schema == schemas.EXAMPLES.schema
    rows = table.to_pylist()
    assert len(rows) == 164 and {r["family"] for r in rows} == {"code"}
    assert {r["id"] for r in rows} == {f"humaneval/HumanEval/{i}" for i in range(164)}
    for r in rows:
        meta = json.loads(r["meta"])
        assert r["answer"] == meta["entry_point"]
        assert r["tests"].endswith(f"\n\ncheck({r['answer']})\n")
        assert r["prompt"].startswith("Complete the following Python function.")
        assert meta["humaneval_prompt"].strip() in r["prompt"]
        assert r["reference"].startswith(meta["humaneval_prompt"].lstrip("\n"))
    # The canonical function passes its own tests, so reference and tests were assembled correctly.
    assert failing_programs([r["reference"] + "\n" + r["tests"] for r in rows]) == []
    # A wrong function fails them, so the tests are really executed.
    first = next(r for r in rows if r["id"] == "humaneval/HumanEval/0")
    broken = first["reference"].replace("return ", "return None and ", 1)
    assert failing_programs([broken + "\n" + first["tests"]]) == [0]


def test_bundled_medmcqa_sample_parses_every_question(medmcqa_cache: Path) -> None:
    table = examples(medmcqa_cache, dataset="medmcqa")
    rows = table.to_pylist()
    assert len(rows) == 300 and {r["family"] for r in rows} == {"mcqa"}
    ideals = {}
    for line in EVALS_SAMPLE.read_text().splitlines():
        rec = json.loads(line)
        ideals[rec["input"][1]["content"].split("\n\n", 2)[1].strip()] = rec["ideal"]
    for r in rows:
        assert len(r["options"]) == 4 and r["reference"] == f"Answer: {r['answer']}"
        question = r["prompt"].split("Question: ", 1)[1].split("\n\nA. ", 1)[0]
        ideal = ideals[question]
        assert r["answer"] == ideal[0].upper()
        assert r["options"]["abcd".index(ideal[0])] == ideal[3:].strip()
        assert "Answer: <letter>" in r["prompt"] and json.loads(r["meta"])["subject"]
    assert len({r["answer"] for r in rows}) == 4


def test_missing_medmcqa_asset_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="unisd assets install"):
        examples(tmp_path, dataset="medmcqa")


def test_bundled_math_answers_are_correct_by_reasoning_gym() -> None:
    import reasoning_gym

    cfg = IngestConfig(dataset="math", num_math_items=40, math_tasks=("basic_arithmetic", "chain_sum"),
                       seed=3)
    rows = run(cfg, Path("."))["examples"].to_pylist()
    assert 30 <= len(rows) <= 40 and {r["family"] for r in rows} == {"math"}
    source = {t: list(reasoning_gym.create_dataset(t, size=20, seed=3)) for t in cfg.math_tasks}
    for r in rows:
        meta = json.loads(r["meta"])
        entry = source[meta["task"]][meta["source_index"]]
        assert entry["question"] in r["prompt"] and r["reference"] == f"Answer: {r['answer']}"
        scorer = reasoning_gym.create_dataset(meta["task"], size=1, seed=3)
        assert scorer.score_answer(r["answer"], entry) == 1.0


def test_math_params_set_the_difficulty_and_direct_answers_ask_for_the_answer_line_alone() -> None:
    import re

    cfg = IngestConfig(dataset="math", num_math_items=60, math_tasks=("chain_sum",), math_answer="direct",
                       math_params={"chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}})
    rows = run(cfg, Path("."))["examples"].to_pylist()
    for r in rows:
        terms = re.findall(r"\d+", r["prompt"].split("problem:")[-1].split("=")[0])
        assert len(terms) == 2 and all(len(t) == 1 for t in terms), r["prompt"]
        assert 'Give only the final answer, on one line, as "Answer: <number>".' in r["prompt"]
        assert "step by step" not in r["prompt"] and r["reference"] == f"Answer: {r['answer']}"
    assert {r["reference"] for r in rows} != {r["reference"] for r in run(IngestConfig(
        dataset="math", num_math_items=60, math_tasks=("chain_sum",)), Path("."))["examples"].to_pylist()}
    assert hash(cfg) == hash(IngestConfig(**{**cfg.__dict__}))


@pytest.mark.parametrize(("params", "message"), [({"chain_sum": {"no_such": 1}}, r"math_params.chain_sum: .*no_such"),
                                                 ({"gcd": {"min_value": 2}}, "math_params.gcd: not one of math_tasks")])
def test_bad_math_params_are_one_line(params, message) -> None:
    with pytest.raises(ValueError, match=message):
        examples(dataset="math", math_tasks=("chain_sum",), num_math_items=3, math_params=params)


def test_unknown_math_task_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no_such_task"):
        examples(dataset="math", math_tasks=("no_such_task",), num_math_items=3)


# --- splits, determinism, leaks --------------------------------------------------------------------

def test_same_seed_gives_identical_bytes_and_another_seed_another_split(medmcqa_cache: Path) -> None:
    for kw in ({"dataset": "humaneval"}, {"dataset": "medmcqa"}, {"dataset": "math", "num_math_items": 50}):
        first, again = examples(medmcqa_cache, seed=1, **kw), examples(medmcqa_cache, seed=1, **kw)
        assert ipc_bytes(first) == ipc_bytes(again)
    a, b = examples(dataset="humaneval", seed=1), examples(dataset="humaneval", seed=2)
    assert set(splits_of(a)) == set(splits_of(b)) and splits_of(a) != splits_of(b)


def test_test_fraction_controls_the_hash_split() -> None:
    only_train = examples(dataset="humaneval", test_fraction=0.0, validation_fraction=0.0)
    assert set(only_train.column("split").to_pylist()) == {"train"}
    assert set(examples(dataset="humaneval", test_fraction=1.0).column("split").to_pylist()) == {"test"}
    n_test = examples(dataset="humaneval", test_fraction=0.25).column("split").to_pylist().count("test")
    assert 20 <= n_test <= 62


def test_split_of_an_item_does_not_depend_on_other_items(tmp_path: Path) -> None:
    lines = (FIXTURES / "gsm8k.jsonl").read_text().splitlines()
    (tmp_path / "all.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "some.jsonl").write_text("\n".join(lines[1:3]) + "\n")
    full = splits_of(examples(dataset="gsm8k", source="local", path=str(tmp_path / "all.jsonl"), seed=5))
    part = splits_of(examples(dataset="gsm8k", source="local", path=str(tmp_path / "some.jsonl"), seed=5))
    assert len(part) == 2 and all(full[i] == s for i, s in part.items())


def test_ids_are_stable_across_runs_and_record_order(tmp_path: Path) -> None:
    lines = (FIXTURES / "scienceqa.jsonl").read_text().splitlines()
    (tmp_path / "reversed.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    forward = examples(dataset="scienceqa", source="local", path=str(FIXTURES / "scienceqa.jsonl"))
    backward = examples(dataset="scienceqa", source="local", path=str(tmp_path / "reversed.jsonl"))
    assert ipc_bytes(forward) == ipc_bytes(backward)
    assert all(i.startswith("scienceqa/") and len(i) == len("scienceqa/") + 16
               for i in forward.column("id").to_pylist())


def test_limit_caps_each_split_after_a_seeded_shuffle(medmcqa_cache: Path) -> None:
    full = examples(medmcqa_cache, dataset="medmcqa", seed=4)
    capped = examples(medmcqa_cache, dataset="medmcqa", seed=4, limit=10)
    assert capped.column("split").to_pylist() == ["train"] * 10 + ["test"] * 10
    assert set(capped.column("id").to_pylist()) <= set(full.column("id").to_pylist())
    for split in ("train", "test"):
        order = [r["id"] for r in full.to_pylist() if r["split"] == split]
        assert [r["id"] for r in capped.to_pylist() if r["split"] == split] == order[:10]
    reseeded = examples(medmcqa_cache, dataset="medmcqa", seed=5, limit=10)
    assert set(reseeded.column("id").to_pylist()) != set(capped.column("id").to_pylist())


def test_bundled_tables_never_leak_between_splits(medmcqa_cache: Path) -> None:
    for kw in ({"dataset": "humaneval"}, {"dataset": "medmcqa"}, {"dataset": "math", "num_math_items": 200}):
        assert_no_leak(examples(medmcqa_cache, **kw))


def test_duplicate_prompts_across_splits_are_dropped_from_train(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "question": "What is 2 + 2?", "answer": "4", "split": "train"},
        {"id": "b", "question": "what is  2 + 2?", "answer": "4", "split": "test"},
        {"id": "c", "question": "What is 3 + 3?", "answer": "6", "split": "train"},
        {"id": "c", "question": "What is 3 + 3 exactly?", "answer": "6", "split": "validation"},
        {"id": "d", "question": "What is 5 + 5?", "answer": "10", "split": "train"},
        {"id": "d", "question": "What is 5 + 5?", "answer": "10", "split": "train"},
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = examples(dataset="local", family="math", path=str(path), columns={"prompt": "question"},
                     on_duplicate="keep_first")
    assert splits_of(table) == {"qa/b": "test", "qa/c": "validation", "qa/d": "train"}
    assert_no_leak(table)
