"""Publish a finished run's model on the Hugging Face Hub, with a model card.

`push_to_hub(run_dir, repo_id)` takes a run folder (`train.output_dir`: `config.yaml`,
`eval.json`, `final/`), writes the model card as `final/README.md` and uploads the
`final/` folder (weights as safetensors, tokenizer, and for LoRA runs `adapter/`) to the
model repository `repo_id` (created when missing; `train.hub_model_id`). It returns the
repository's URL. `model_card(run_dir, cfg_dict, eval_results)` builds the card alone,
to read or edit before pushing.

The card (README.md in the Hub's format) has YAML front matter (library_name, pipeline_tag,
base_model when the base model is a hub id, tags: srft, the preset and
reinforcement-learning when the objective has an RL term, datasets when the training data
is a hub id) and says: the preset and what it trains (its summary and formula from
`srft.objective`), the base model, the training data, the reward, the key
hyper-parameters, the evaluation before and after training (a table per evaluation set
from `eval.json`; "not evaluated" without one), the system prompt the model was trained
with, the srft version it was trained with, the resolved config (config.yaml, in a
collapsed block: `srft train --config` re-runs it) and a citation of the SRFT paper
(arXiv 2506.19767). The config is shown as saved, so local paths (a local model folder,
a data file, train.output_dir) appear in the card as they are: read the card
(`model_card`) before pushing to a public repository when that matters.

What it does not do: it pushes only `final/`, once, when asked; never checkpoints
(`checkpoints/`), metrics, plots or config.yaml, and nothing during training. It changes
nothing in the run folder but `final/README.md` (replaced when it exists). Errors of the
Hub (authentication, permissions, network) propagate as a RuntimeError that names the
folder and the repository. `private` applies when the repository is created; an existing
repository keeps its visibility.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

import srft
from srft.presets import get_preset

PAPER_ARXIV = "2506.19767"
PAPER_TITLE = "SRFT: A Single-Stage Method with Supervised and Reinforcement Fine-Tuning for Reasoning"
CITATION = f"""@article{{fu2025srft,
  title   = {{{PAPER_TITLE}}},
  author  = {{Fu, Yuqian and others}},
  journal = {{arXiv preprint arXiv:{PAPER_ARXIV}}},
  year    = {{2025}}
}}"""

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq", ".txt", ".safetensors", ".bin")
_REWARD_TEXT = {
    "math": "the last \\boxed{} answer checked against the reference answer with math-verify "
            "(letters for multiple choice)",
    "testbed": "the testbed's verifier (reasoning-gym's chain_sum score, binarised)",
}


def srft_version() -> str:
    """srft.__version__, else the installed distribution's version, else "unknown"."""
    try:
        v = getattr(srft, "__version__", None)
        if v:
            return str(v)
    except Exception:  # noqa: BLE001 (a version string must never fail a push)
        pass
    try:
        from importlib.metadata import version

        return version("srft")
    except Exception:  # noqa: BLE001
        return "unknown"


def hub_id(name: Any) -> Optional[str]:
    """`name` when it looks like a Hub repository id ("namespace/name", an optional ":SPLIT" dropped)
    and is not a local path; else None (testbed, champ, "<in-memory ...>", files, folders)."""
    if not isinstance(name, str) or not name or name.startswith("<"):
        return None
    base, _, split = name.rpartition(":")
    if base and split and "/" not in split:
        name = base
    if not _HUB_ID.match(name) or ".." in name or "--" in name or name.lower().endswith(_FILE_SUFFIXES):
        return None
    try:
        if Path(name).expanduser().exists():
            return None
    except OSError:
        pass
    return name


def load_run(run_dir: Path) -> tuple[dict, Optional[dict]]:
    """(config.yaml as a dict, eval.json as a dict or None when absent); a ValueError naming the file
    when config.yaml is missing or either file cannot be read."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{cfg_path}: no such file; {run_dir} is not a srft run folder (train.output_dir)")
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{cfg_path}: not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: expected a mapping of config sections")
    ev_path = run_dir / "eval.json"
    ev = None
    if ev_path.is_file():
        try:
            ev = json.loads(ev_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{ev_path}: not valid JSON: {e}") from None
        if not isinstance(ev, dict):
            raise ValueError(f"{ev_path}: expected a JSON object")
    return cfg, ev


def _section(cfg: dict, name: str) -> dict:
    s = cfg.get(name)
    return s if isinstance(s, dict) else {}


def _preset_info(name: str) -> tuple[str, str]:
    """(summary, formula) of a preset; placeholders for a name this srft does not know."""
    try:
        p = get_preset(name)
        return p.summary, p.formula
    except (ValueError, ImportError):
        return f"preset {name!r} (not known to srft {srft_version()}).", ""


def _uses_rl(cfg: dict) -> bool:
    o = _section(cfg, "objective")
    return bool(o.get("rl_self", True) or o.get("rl_demo", True))


def _describe_model(name: Any) -> str:
    if name in (None, ""):
        return "unknown"
    if name == "testbed":
        return "the srft testbed base model (a small model srft builds locally; not on the Hub)"
    if name == "<in-memory model>":
        return "a model object passed from Python (no name or path recorded)"
    hid = hub_id(name)
    if hid:
        return f"[{hid}](https://huggingface.co/{hid})"
    return f"the local model folder `{name}`"


def _describe_data(name: Any) -> str:
    if name in (None, ""):
        return "unknown"
    if name == "testbed":
        return ("the srft testbed (chained one-digit additions / subtractions with step-by-step "
                "demonstrations; built in, not on the Hub)")
    if name == "champ":
        return "CHAMP competition math (the champ-dataset package)"
    m = re.fullmatch(r"<in memory: (\d+) rows>", str(name))
    if m:
        return f"an in-memory dataset of {m.group(1)} rows passed from Python (not published)"
    if str(name).startswith("<in memory"):
        return "an in-memory dataset passed from Python (not published)"
    hid = hub_id(name)
    if hid:
        split = str(name)[len(hid) + 1:] if str(name) != hid else ""
        return f"[{hid}](https://huggingface.co/datasets/{hid})" + (f" (split `{split}`)" if split else "")
    return f"the local data `{name}`"


def _describe_reward(cfg: dict) -> str:
    d = _section(cfg, "data")
    spec = str(d.get("reward") if d.get("reward") is not None else "auto")
    names = [x.strip() for x in spec.split(",") if x.strip()] or ["auto"]
    weights = [w.strip() for w in str(d.get("reward_weights") or "").split(",") if w.strip()]
    parts = []
    for i, n in enumerate(names):
        resolved = ("testbed" if d.get("dataset", "testbed") == "testbed" else "math") if n == "auto" else n
        what = _REWARD_TEXT.get(resolved, "a custom reward function")
        label = f"`{n}` → `{resolved}`" if n == "auto" else f"`{n}`"
        w = f" × {weights[i]}" if len(weights) == len(names) and len(names) > 1 else ""
        parts.append(f"{label}{w}: {what}")
    text = "; ".join(parts) + (" (summed)" if len(names) > 1 else "")
    if not _uses_rl(cfg):
        text += ". Not used in training by this preset (no RL term); it scores the evaluation"
    return text


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "–"


def _fenced(text: str, lang: str) -> list[str]:
    """A markdown code block holding `text`, its fence longer than any run of backticks in it."""
    fence = "`" * max(3, 1 + max((len(x) for x in re.findall(r"`+", text)), default=0))
    return [fence + lang, text, fence]


def _eval_section(cfg: dict, ev: Optional[dict]) -> list[str]:
    """The Evaluation section: a table per set from eval.json (the trainer's "before"/"after"; an
    `srft eval` eval.json's "results"), or "not evaluated"."""
    before = ev.get("before") if isinstance(ev, dict) else None
    after = ev.get("after") if isinstance(ev, dict) else None
    results = ev.get("results") if isinstance(ev, dict) else None
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    e = _section(cfg, "eval")
    if not before and not after and isinstance(results, dict) and results:
        lines = ["Accuracy (%) of this model (`srft eval`):", "", "| set | n | accuracy |", "|---|---|---|"]
        for name, r in results.items():
            r = r if isinstance(r, dict) else {}
            lines.append(f"| {name} | {r.get('n', '–')} | {_pct(r.get('accuracy'))} |")
        return lines
    if not before and not after:
        return ["Not evaluated" + (" (no eval.json in the run folder)." if ev is None
                                   else " (the run had no evaluation sets, or eval.limit was 0).")]
    k = next((r.get("k") for r in list(after.values()) + list(before.values()) if isinstance(r, dict) and "k" in r),
             e.get("k", 1))
    temp = e.get("temperature", 0.0)
    proto = ("greedy decoding" if not temp else f"temperature {temp}, top_p {e.get('top_p', 1.0)}, avg@{k}")
    lines = [f"Accuracy (%) of the base model (before) and of this model (after), {proto}, "
             f"at most {e.get('max_new_tokens', '?')} new tokens, scored by the reward above"
             + (f"; evaluation data: {_describe_data(e['dataset'])}" if e.get("dataset") else "") + ".",
             "", "| set | n | before | after | change |", "|---|---|---|---|---|"]
    for name in list(before) + [n for n in after if n not in before]:
        b, a = before.get(name), after.get(name)
        b = b if isinstance(b, dict) else {}
        a = a if isinstance(a, dict) else {}
        ba, aa = b.get("accuracy"), a.get("accuracy")
        change = (f"{100 * (aa - ba):+.1f}" if isinstance(ba, (int, float)) and isinstance(aa, (int, float))
                  else "–")
        lines.append(f"| {name} | {a.get('n', b.get('n', '–'))} | {_pct(ba)} | {_pct(aa)} | {change} |")
    return lines


def _card_meta(base: Any, dataset: Any, preset: str, rl: bool) -> dict[str, Any]:
    """The card's YAML front matter: library, pipeline, base model and datasets (hub ids only), tags."""
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    if hub_id(base):
        meta["base_model"] = hub_id(base)
    tags = ["srft"] + ([preset] if preset != "unknown" else []) + (["reinforcement-learning"] if rl else [])
    meta["tags"] = list(dict.fromkeys(tags))
    if hub_id(dataset):
        meta["datasets"] = [hub_id(dataset)]
    return meta


def _card_intro(meta: dict, title: str, base: Any, preset: str) -> list[str]:
    """The front matter block, the title and the one-paragraph introduction."""
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
            f"# {title}", "",
            f"Fine-tuned from {_describe_model(base)} with the `{preset}` preset of srft, a trainer for "
            f"SRFT (Supervised Reinforcement Fine-Tuning, [arXiv {PAPER_ARXIV}](https://arxiv.org/abs/{PAPER_ARXIV})) "
            f"and its baselines.", ""]


def _training_lines(run_dir: Path, cfg: dict, ev: Optional[dict], preset: str, summary: str, formula: str,
                    steps: Any) -> list[str]:
    """The Training section's list: preset, objective, stages, base model, data, reward, LoRA and the run."""
    m, d = _section(cfg, "model"), _section(cfg, "data")
    base = m.get("name_or_path")
    lines = ["## Training", "",
             f"- **Preset**: `{preset}`: {summary}"]
    if formula:
        lines.append(f"- **Objective**: `{formula}`")
    stages = (ev or {}).get("stages")
    if isinstance(stages, list) and stages:
        lines.append("- **Stages**: " + ", then ".join(
            f"`{s.get('preset')}` for {s.get('steps')} steps" for s in stages if isinstance(s, dict)))
    lines += [f"- **Base model**: {_describe_model(base)}",
              f"- **Training data**: {_describe_data(d.get('dataset'))}",
              f"- **Reward**: {_describe_reward(cfg)}"]
    if m.get("lora_r"):
        lines.append(f"- **LoRA**: r = {m['lora_r']}, alpha = {m.get('lora_alpha')}, modules "
                     f"`{m.get('lora_target_modules')}`; the repository holds the merged model"
                     + (" and the adapter in `adapter/`" if (run_dir / "final" / "adapter").is_dir() else ""))
    if ev and ev.get("train_seconds") is not None:
        lines.append(f"- **Run**: {steps} steps in {ev['train_seconds']} s on {ev.get('world_size', 1)} process"
                     + ("es" if ev.get("world_size", 1) != 1 else ""))
    return lines


def _hparam_lines(cfg: dict) -> list[str]:
    """The table of key hyper-parameters (those set in the config)."""
    m, r, o, t = (_section(cfg, s) for s in ("model", "rollout", "optim", "train"))
    hp = [("steps (train.max_steps)", t.get("max_steps")),
          ("prompts per step", t.get("prompts_per_step")),
          ("rollouts per prompt (rollout.n_rollouts)", r.get("n_rollouts")),
          ("demonstrations per prompt (rollout.n_demos)", r.get("n_demos")),
          ("rollout temperature", r.get("temperature")),
          ("max new tokens per response", r.get("max_new_tokens")),
          ("learning rate (optim.lr)", o.get("lr")),
          ("lr schedule / warm-up steps", f"{o.get('schedule')} / {o.get('warmup_steps')}"),
          ("optimiser steps per rollout batch", t.get("mini_batches")),
          ("dtype", m.get("dtype")),
          ("seed", t.get("seed"))]
    lines = ["", "Key hyper-parameters:", "", "| hyper-parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in hp if v is not None]
    return lines


def _prompt_lines(d: dict, repo_id: Optional[str]) -> list[str]:
    """The Prompt format section (system prompt, chat template) and, with a `repo_id`, a usage example."""
    sp, chat = d.get("system_prompt"), d.get("chat_template", "auto") == "auto"
    lines = ["", "## Prompt format", ""]
    if sp:
        lines += ["Prompts were encoded with this system prompt"
                  + (" through the tokenizer's chat template (when it has one)" if chat else " (no chat template)")
                  + "; use the same at inference:", ""] + _fenced(str(sp), "text")
    else:
        lines.append("Prompts were encoded without a system prompt"
                     + (", through the tokenizer's chat template when it has one." if chat
                        else ", without a chat template."))
    if repo_id:
        lines += ["", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```"]
    return lines


def _how_trained_lines(cfg: dict, version: str) -> list[str]:
    """The How-it-was-trained section (srft version, the config.yaml block) and the Citation section."""
    cfg_text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True).rstrip()
    return ["", "## How it was trained", "",
            f"Trained with srft {version}. The exact `srft train` command line is not recorded; the "
            "resolved config below (the run's config.yaml) holds every setting, and "
            "`srft train --config config.yaml` re-runs it (given the same model and data).", "",
            "<details><summary>config.yaml</summary>", ""] + _fenced(cfg_text, "yaml") + ["",
            "</details>", "",
            "## Citation", "",
            f"SRFT: Fu et al., \"{PAPER_TITLE}\", [arXiv {PAPER_ARXIV}](https://arxiv.org/abs/{PAPER_ARXIV}).", "",
            "```bibtex", CITATION, "```", ""]


def model_card(run_dir: Path, cfg_dict: dict, eval_results: Optional[dict], *, repo_id: Optional[str] = None) -> str:
    """The model card (README.md text: YAML front matter + markdown) of the run in `run_dir`, from its
    resolved config (`cfg_dict`, config.yaml as a dict) and its eval.json (`eval_results`, None when
    the run has none). `repo_id` (optional) names the repository in the title and the usage example."""
    run_dir = Path(run_dir)
    cfg = cfg_dict or {}
    m, d, t = (_section(cfg, s) for s in ("model", "data", "train"))
    ev = eval_results if isinstance(eval_results, dict) else None
    preset = str(t.get("preset") or (ev or {}).get("preset") or "unknown")
    summary, formula = _preset_info(preset)
    base = m.get("name_or_path")
    rl = _uses_rl(cfg)
    meta = _card_meta(base, d.get("dataset"), preset, rl)

    version = srft_version()
    title = repo_id.split("/")[-1] if repo_id else run_dir.resolve().name
    steps = (ev or {}).get("steps", t.get("max_steps"))
    lines = _card_intro(meta, title, base, preset)
    lines += _training_lines(run_dir, cfg, ev, preset, summary, formula, steps)
    lines += _hparam_lines(cfg)
    lines += ["", "## Evaluation", ""] + _eval_section(cfg, ev)
    lines += _prompt_lines(d, repo_id)
    lines += _how_trained_lines(cfg, version)
    return "\n".join(lines)


def _check_repo_id(repo_id: Any) -> str:
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"train.hub_model_id: the Hub repository to push to must be a non-empty string "
                         f"such as 'user/model-name', got {repo_id!r}")
    repo_id = repo_id.strip()
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)
    except ImportError:
        pass
    except ValueError as e:  # HFValidationError: not a repo id the Hub accepts
        raise ValueError(f"train.hub_model_id: {repo_id!r} is not a valid Hub repository id: {e}") from None
    return repo_id


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _hint(e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        return (" (not logged in, or the token cannot write there: `hf auth login`, the HF_TOKEN "
                "environment variable or token=...)")
    return ""


def push_to_hub(run_dir, repo_id: str, *, private: bool = False, token: Optional[str] = None, api=None,
                log: Callable[[str], Any] = print) -> str:
    """Write the model card to `run_dir/final/README.md` and upload `run_dir/final/` to the Hub model
    repository `repo_id` (created when missing, `private` then). `api`: an object with huggingface_hub's
    `create_repo` and `upload_folder` (default `huggingface_hub.HfApi(token=token)`). Returns the
    repository's URL. ValueError (nothing written) for a bad `repo_id`, a missing final/ or
    config.yaml; RuntimeError naming the folder and the repository when the Hub refuses."""
    repo_id = _check_repo_id(repo_id)
    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not final.is_dir():
        raise ValueError(f"{final}: no such folder; push_to_hub uploads a finished run's final model "
                         f"(train.output_dir/final, written at the end of training)")
    cfg, ev = load_run(run_dir)
    card = model_card(run_dir, cfg, ev, repo_id=repo_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    kw = {"token": token} if token is not None else {}
    readme = final / "README.md"
    _write_text_atomic(readme, card)
    log(f"[srft] wrote the model card {readme}")
    preset = str(_section(cfg, "train").get("preset") or "unknown")
    steps = (ev or {}).get("steps", _section(cfg, "train").get("max_steps"))
    message = f"srft {srft_version()}: {preset} model, {steps} steps (run {run_dir.resolve().name})"
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", **kw)
        info = api.upload_folder(folder_path=str(final), repo_id=repo_id, repo_type="model",
                                 commit_message=message, **kw)
    except Exception as e:  # noqa: BLE001 (any Hub / network error, with what was being pushed)
        raise RuntimeError(f"pushing {final} to {repo_id} failed: {type(e).__name__}: {e}{_hint(e)}") from e
    url = next((str(u) for u in (repo_url, getattr(info, "repo_url", None)) if isinstance(u, str) and u),
               f"https://huggingface.co/{repo_id}")
    commit = getattr(info, "commit_url", None)
    log(f"[srft] pushed {final} to {url}" + (f" ({commit})" if isinstance(commit, str) else ""))
    return url
