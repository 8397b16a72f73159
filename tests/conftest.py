"""Shared fixtures: a tiny random Qwen2 model with the testbed tokenizer, built
locally in a temporary folder (no download, a few seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_tiny_model(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from srft.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def verl_row(index: int, question: str, demonstration: str, answer: str, system: str | None = None,
             source: str = "openr1") -> dict:
    """One row in the verl / LUFFY parquet layout (prompt messages, demonstration in
    `target`, answer in reward_model.ground_truth)."""
    prompt = ([{"content": system, "role": "system"}] if system else []) + [{"content": question, "role": "user"}]
    return {
        "data_source": source, "prompt": prompt,
        "target": [{"content": demonstration, "role": "assistant"}],
        "ability": "math", "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": index, "split": "default"},
    }


def tiny_rows() -> list[dict]:
    """Testbed-style rows (scored by the testbed verifier, in-process)."""
    return [{"prompt": f"Q:{a}+{b}-1\nA:", "demonstration": f"<think>{a}+{b}={a + b}</think>{a + b - 1}",
             "answer": str(a + b - 1)} for a in range(4) for b in range(3)]


@pytest.fixture
def tiny_jsonl(tmp_path) -> Path:
    """tiny_rows() as a JSONL training file."""
    import json

    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows()))
    return p


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tests never touch the user's cache unless SRFT_CACHE is set by the caller."""
    if "SRFT_TEST_USE_CACHE" not in os.environ:
        os.environ["SRFT_CACHE"] = str(tmp_path_factory.mktemp("srft_cache"))
    yield


def _vllm_available() -> bool:
    from srft.rollout.vllm_engine import vllm_available

    return vllm_available()


# the vLLM engine's tests (tests/test_vllm*.py) run where vLLM is installed, and say how otherwise
requires_vllm = pytest.mark.skipif(
    not _vllm_available(),
    reason="vLLM is not installed here: bash scripts/setup.sh --vllm && "
           ".venv-vllm/bin/python -m pytest -q tests/test_vllm.py tests/test_vllm_train.py")


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory) -> Path:
    """A Qwen2 model of head size 32 (vLLM's CPU attention does not take the tiny model's 8)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: in-memory weight sync
    return make_tiny_model(tmp_path_factory.mktemp("vllm") / "model", seed=1, hidden=128, layers=2)
