"""Small in-memory tables shared by the train and contexts tests (and checks that they are valid).

Three families (MCQA with and without rationale, maths, code), train and test splits, written in
the real `examples` schema.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

import schemas


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny-model steps are dominated by thread overhead: one intra-op thread is 5-10x faster on a
    shared 2-core machine. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mcqa(i: int, split: str, answer: str, rationale: str | None) -> dict:
    options = [f"option {c}{i}" for c in "abcd"]
    prompt = (f"Answer the following multiple-choice question.\n\nQuestion: What is item {i}?\n\n"
              + "\n".join(f"{L}. {o}" for L, o in zip("ABCD", options))
              + '\n\nGive the final answer on the last line as "Answer: <letter>".')
    head = f"Reasoning: {rationale}\n" if rationale else ""
    return {"id": f"mcqa-{split}-{i}", "dataset": "mcqa_ds", "split": split, "family": "mcqa", "prompt": prompt,
            "reference": f"{head}Answer: {answer}", "rationale": rationale, "options": options, "answer": answer,
            "tests": None, "meta": None}


def _math(i: int, split: str) -> dict:
    a, b = 3 + i, 11 + 2 * i
    rationale = f"{a} plus {b} makes {a + b}."
    return {"id": f"math-{split}-{i}", "dataset": "math_ds", "split": split, "family": "math",
            "prompt": f"Solve the following problem.\n\nWhat is {a} + {b}?\n\nAnswer on the last line.",
            "reference": f"Reasoning: {rationale}\nAnswer: {a + b}", "rationale": rationale,
            "options": None, "answer": str(a + b), "tests": None, "meta": None}


def _code(i: int, split: str) -> dict:
    code = f"def f{i}(x):\n    if x < {i}:\n        return x + {i}\n    return x\n"
    return {"id": f"code-{split}-{i}", "dataset": "code_ds", "split": split, "family": "code",
            "prompt": f"Write a Python function f{i}(x) that adds {i} to x when x is below {i}.",
            "reference": code, "rationale": None, "options": None, "answer": f"f{i}",
            "tests": f"assert f{i}(0) == {i}", "meta": None}


def examples_table(n_train: int = 4) -> pa.Table:
    rows = []
    for i in range(n_train):
        rows.append(_mcqa(i, "train", "ABCD"[i % 4], f"Because item {i} is described by option {i}." if i % 2 else None))
        rows.append(_math(i, "train"))
        rows.append(_code(i, "train"))
    rows += [_mcqa(99, "test", "B", "Test rationale."), _math(99, "test"), _code(99, "test")]
    return schemas.conform(rows, schemas.EXAMPLES)


def test_fixture_tables_conform():
    table = examples_table()
    assert table.num_rows == 15
    assert set(table.column("family").to_pylist()) == {"mcqa", "math", "code"}


def eos_prone_model(src, dst, scale: float = 6.0):
    """A copy of the tiny random model whose completions end at EOS after uneven numbers of tokens.

    The tied EOS embedding row is set to `scale` × a seeded direction pointing away from the hidden
    state that ends a chat prompt, so EOS is rarely the first token but likely after a few: real
    sampled completions of different lengths, some finished, some cut at max_new_tokens.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engines.generation import chat_ids

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    with torch.no_grad():
        ends = [model(input_ids=torch.tensor([chat_ids(tok, f"What is item {i}? Answer briefly.")]),
                      output_hidden_states=True).hidden_states[-1][0, -1] for i in range(8)]
        d = torch.stack(ends).mean(0)
        d = d / d.norm()
        u = torch.randn(d.shape[0], generator=torch.Generator().manual_seed(0))
        u = u - (u @ d) * d - 0.5 * d
        model.get_output_embeddings().weight[tok.eos_token_id] = scale * u / u.norm()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst
