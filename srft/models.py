"""Model loading: a model folder, a hub id or the built-in testbed model, with its tokenizer.

Weights load with safetensors only unless `model.allow_pickle` (pickle can run code);
`trust_remote_code` stays off unless asked for. A local-looking path that is missing, or is
not a Hugging Face model folder, is an error naming the folder (`srft.preflight` runs the same
check before any data loads).
"""

from __future__ import annotations

from pathlib import Path

from srft.testbed.base_model import ensure_base_model


def resolve_model_path(name_or_path: str, log=print) -> str:
    if name_or_path == "testbed":
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


def tokenizer_for(model, tokenizer=None):
    """The tokenizer of a model object given in Python (`SRFTTrainer(model=...)`): `tokenizer` when
    given, else the one saved in the model's folder; a pad token set (the EOS) when it has none.
    Returns (tokenizer, the model's folder or "<in-memory model>")."""
    path = getattr(model, "name_or_path", "") or "<in-memory model>"
    if tokenizer is None:
        from transformers import AutoTokenizer  # heavy: loaded when a tokenizer is needed

        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, path


def adapt_model(model, model_cfg):
    """Gradient checkpointing and LoRA (peft), as `model.*` configures them."""
    m = model_cfg
    if m.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if m.lora_r > 0:
        from peft import LoraConfig, get_peft_model  # optional and heavy: only LoRA runs load peft

        targets = m.lora_target_modules
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        model = get_peft_model(model, LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
        if m.gradient_checkpointing:
            model.enable_input_require_grads()
    return model
