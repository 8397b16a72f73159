"""Model loading: a model folder, a hub id or the built-in testbed model, with its tokenizer.

Weights load with safetensors only unless `model.allow_pickle` (pickle can run code);
`trust_remote_code` stays off unless asked for. A local-looking path that is missing, or is
not a Hugging Face model folder, is an error naming the folder (`srft.preflight` runs the same
check before any data loads).
"""

from __future__ import annotations

from pathlib import Path


def resolve_model_path(name_or_path: str, log=print) -> str:
    if name_or_path == "testbed":
        from srft.testbed.base_model import ensure_base_model

        return str(ensure_base_model(0, log=log))
    return name_or_path


def check_model_folder(path: str, allow_pickle: bool = False, log=print) -> bool:
    """A local model folder must exist and hold safetensors weights; anything that
    does not look like a local path is treated as a hub id. Pickle weights
    (pytorch_model.bin) load only with `allow_pickle`, with a warning. Returns whether
    to load with safetensors."""
    p = Path(path)
    looks_local = p.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if not looks_local:
        return True
    if not p.is_dir():
        raise FileNotFoundError(f"model: no such folder {path}")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model: {path} has no config.json (not a Hugging Face model folder)")
    if any(p.glob("*.safetensors")):
        return True
    pickles = sorted(q.name for q in p.glob("*.bin")) + sorted(q.name for q in p.glob("*.pt"))
    if pickles and allow_pickle:
        log(f"[srft] warning: {path} has pickle weights only ({', '.join(pickles)}); loading them because "
            f"model.allow_pickle is true (unpickling can run code: only do this for files you trust)")
        return False
    hint = (f" (found pickle weights {pickles}: convert them to safetensors, or pass --model.allow_pickle true "
            f"if you trust the files)") if pickles else ""
    raise FileNotFoundError(f"model: {path} has no *.safetensors weights{hint}")


def load_model_and_tokenizer(name_or_path: str, model_cfg, log=print):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path, log=log)
    use_safetensors = check_model_folder(path, getattr(model_cfg, "allow_pickle", False), log=log)
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(model_cfg.dtype)
    if dtype is None:
        raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {model_cfg.dtype!r}")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code, use_safetensors=use_safetensors
    )
    return model, tok, path
