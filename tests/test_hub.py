"""srft.hub: the model card of a run folder and the push of final/ to the Hub, with a mock Hub API
and with huggingface_hub's real HfApi whose network methods are stubbed. Sockets are blocked in
every test of this module, so nothing here can reach a network."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from srft.config import Config, apply_preset, save_config
from srft.hub import model_card, load_run, push_to_hub


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def sample(prompt: str) -> dict:
    return {"prompt": prompt, "completion": "16", "reward": 0.0}


def set_result(acc: float, n: int = 200) -> dict:
    """One evaluation set's entry as srft.evaluation.evaluate returns it (k = 1)."""
    return {"accuracy": acc, "pass@1": acc, "n": n, "k": 1, "mean_length": 2.85, "seconds": 0.12,
            "samples": [sample("Q:5-7+9+4\nA:")]}


def trainer_eval_json(model: str = "Qwen/Qwen2.5-Math-1.5B", final: str = "runs/x/final") -> dict:
    """eval.json as srft.trainer.Trainer.train writes it."""
    before = {"id_chain4": set_result(0.145), "ood_chain5": set_result(0.055)}
    after = {"id_chain4": set_result(0.55), "ood_chain5": set_result(0.035)}
    return {"preset": "srft", "steps": 120, "model": model, "final": final, "train_seconds": 170.9,
            "world_size": 1, "before": before, "after": after,
            "history": [{"step": 0, "id_chain4": 0.145, "ood_chain5": 0.055},
                        {"step": 120, "id_chain4": 0.55, "ood_chain5": 0.035}]}


def make_run(tmp_path: Path, *, preset: str = "srft", model: str = "Qwen/Qwen2.5-Math-1.5B",
             dataset="Elliott/Openr1-Math-46k-8192:train", ev: dict | None | bool = True,
             final: bool = True) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    cfg = Config()
    cfg.train.preset = preset
    cfg, _ = apply_preset(cfg)
    cfg.model.name_or_path = model
    cfg.data.dataset = dataset
    cfg.train.max_steps = 120
    cfg.train.seed = 3
    cfg.train.output_dir = str(run)
    cfg.optim.lr = 1e-6
    save_config(cfg, run / "config.yaml")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss/total": 0.5}) + "\n")
    if ev is True:
        ev = trainer_eval_json(model, str(run / "final"))
    if ev:
        (run / "eval.json").write_text(json.dumps(ev, indent=2))
    if final:
        (run / "final").mkdir()
        (run / "final" / "model.safetensors").write_bytes(b"not really weights")
        (run / "final" / "config.json").write_text("{}")
    (run / "checkpoints" / "step-000050").mkdir(parents=True)
    (run / "checkpoints" / "step-000050" / "trainer_state.json").write_text("{}")
    return run


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, sep, _ = card[4:].partition("\n---\n")
    assert sep
    return yaml.safe_load(head)


def snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


class MockApi:
    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        if self.fail:
            raise self.fail
        folder = Path(kwargs["folder_path"])
        self.calls.append(("upload_folder", sorted(p.name for p in folder.iterdir()), kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc",
                               repo_url=f"https://huggingface.co/{kwargs['repo_id']}")


# ---------------------------------------------------------------- the card


def test_card_states_preset_model_data_reward_hparams_and_eval(tmp_path):
    run = make_run(tmp_path)
    cfg, ev = load_run(run)
    card = model_card(run, cfg, ev)
    meta = front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["base_model"] == "Qwen/Qwen2.5-Math-1.5B"
    assert meta["datasets"] == ["Elliott/Openr1-Math-46k-8192"]  # the :train split is not part of the id
    assert meta["tags"] == ["srft", "reinforcement-learning"]  # "srft" once: the preset's tag is the same
    from srft.objective import get_preset

    p = get_preset("srft")
    assert p.summary in card and p.formula in card
    assert "Elliott/Openr1-Math-46k-8192" in card and "split `train`" in card
    assert "`auto` → `math`" in card  # data.reward auto on a non-testbed dataset
    for row in ("| steps (train.max_steps) | 120 |", "| prompts per step | 32 |",
                "| rollouts per prompt (rollout.n_rollouts) | 7 |",
                "| demonstrations per prompt (rollout.n_demos) | 1 |", "| learning rate (optim.lr) | 1e-06 |",
                "| seed | 3 |"):
        assert row in card, row
    assert "| id_chain4 | 200 | 14.5 | 55.0 | +40.5 |" in card
    assert "| ood_chain5 | 200 | 5.5 | 3.5 | -2.0 |" in card
    import srft

    assert f"Trained with srft {srft.__version__}" in card
    assert "arXiv 2506.19767" in card and "https://arxiv.org/abs/2506.19767" in card
    assert "<think>" in card  # the default system prompt, needed at inference
    # the embedded config is the run's config.yaml
    block = card.split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(block) == cfg


def test_card_parses_as_a_hub_model_card(tmp_path):
    from huggingface_hub import ModelCard

    run = make_run(tmp_path)
    card = ModelCard(model_card(run, *load_run(run), repo_id="me/srft-qwen"))
    data = card.data.to_dict()
    assert data["base_model"] == "Qwen/Qwen2.5-Math-1.5B" and "srft" in data["tags"]
    assert card.text.lstrip().startswith("# srft-qwen")
    assert 'AutoModelForCausalLM.from_pretrained("me/srft-qwen")' in card.text


def test_card_sft_testbed_in_memory_and_no_eval(tmp_path):
    run = make_run(tmp_path, preset="sft", model="testbed", dataset=[{"prompt": "p"}] * 5, ev=None)
    cfg, ev = load_run(run)
    assert ev is None and cfg["data"]["dataset"] == "<in memory: 5 rows>"
    card = model_card(run, cfg, ev)
    meta = front_matter(card)
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["tags"] == ["srft", "sft"]  # no RL term: no reinforcement-learning tag
    assert "`sft`" in card and "in-memory dataset of 5 rows" in card
    assert "testbed base model" in card
    assert "Not evaluated" in card and "no eval.json" in card
    assert "Not used in training by this preset" in card
    assert "| rollouts per prompt (rollout.n_rollouts) | 0 |" in card


def test_card_local_model_and_data_are_not_hub_ids(tmp_path):
    model_dir = tmp_path / "org" / "model"  # looks like a hub id relative to tmp_path, but is a local path
    model_dir.mkdir(parents=True)
    data = tmp_path / "train.parquet"
    data.write_bytes(b"")
    run = make_run(tmp_path, preset="grpo", model=str(model_dir), dataset=str(data))
    card = model_card(run, *load_run(run))
    meta = front_matter(card)
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["tags"] == ["srft", "grpo", "reinforcement-learning"]
    assert f"local model folder `{model_dir}`" in card and f"local data `{data}`" in card


def test_card_other_eval_json_shapes(tmp_path):
    run = make_run(tmp_path, ev={"preset": "srft", "steps": 3, "before": {}, "after": {}, "history": []})
    assert "Not evaluated (the run had no evaluation sets" in model_card(run, *load_run(run))
    # `srft eval --output-dir RUN` writes {"model", "results"}
    ev = {"model": "runs/x/final", "results": {"id_chain4": set_result(0.6)}}
    card = model_card(run, load_run(run)[0], ev)
    assert "| id_chain4 | 200 | 60.0 |" in card
    # a multi-stage run (srft.stages) lists its stages
    ev = {**trainer_eval_json(), "preset": "sft_then_grpo",
          "stages": [{"preset": "sft", "steps": 60, "folder": "a"}, {"preset": "grpo", "steps": 60, "folder": "b"}]}
    assert "`sft` for 60 steps, then `grpo` for 60 steps" in model_card(run, load_run(run)[0], ev)


def test_card_unknown_preset_and_sparse_config(tmp_path):
    card = model_card(tmp_path, {"train": {"preset": "from_the_future"}}, None)
    assert "from_the_future" in card and "not known to srft" in card
    front_matter(card)


# ---------------------------------------------------------------- the push


def test_push_with_mock_api(tmp_path):
    run = make_run(tmp_path)
    before = snapshot(run)
    api, logs = MockApi(), []
    url = push_to_hub(run, "me/srft-qwen", private=True, api=api, log=logs.append)
    assert url == "https://huggingface.co/me/srft-qwen"
    (c_name, c_repo, c_kw), (u_name, u_files, u_kw) = api.calls
    assert (c_name, c_repo) == ("create_repo", "me/srft-qwen")
    assert c_kw == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert u_name == "upload_folder"
    assert Path(u_kw["folder_path"]) == run / "final"
    assert u_kw["repo_id"] == "me/srft-qwen" and u_kw["repo_type"] == "model"
    assert "srft" in u_kw["commit_message"] and "120 steps" in u_kw["commit_message"]
    assert u_files == ["README.md", "config.json", "model.safetensors"]  # the card was there at upload time
    readme = (run / "final" / "README.md").read_text()
    assert readme == model_card(run, *load_run(run), repo_id="me/srft-qwen")
    after = snapshot(run)
    assert after.pop("final/README.md")
    assert after == before  # nothing else in the run folder changed
    assert any("commit/abc" in line for line in logs)


def test_push_passes_token_to_an_injected_api(tmp_path):
    run = make_run(tmp_path)
    api = MockApi()
    push_to_hub(run, "me/m", token="hf_x", api=api, log=lambda *_: None)
    assert api.calls[0][2]["token"] == "hf_x" and api.calls[1][2]["token"] == "hf_x"


@pytest.mark.parametrize("repo_id", ["", "   ", None, 7, "a/b/c", "bad id with spaces"])
def test_push_bad_repo_id(tmp_path, repo_id):
    run = make_run(tmp_path)
    api = MockApi()
    with pytest.raises(ValueError, match="train.hub_model_id"):
        push_to_hub(run, repo_id, api=api, log=lambda *_: None)
    assert api.calls == [] and not (run / "final" / "README.md").exists()


def test_push_repo_id_without_namespace_is_accepted(tmp_path):
    run = make_run(tmp_path)
    api = MockApi()
    push_to_hub(run, "srft-model", api=api, log=lambda *_: None)
    assert api.calls[0][1] == "srft-model"


def test_push_without_final_folder(tmp_path):
    run = make_run(tmp_path, final=False)
    api = MockApi()
    with pytest.raises(ValueError, match=str(run / "final")):
        push_to_hub(run, "me/m", api=api, log=lambda *_: None)
    assert api.calls == [] and not (run / "final").exists()


def test_push_without_config(tmp_path):
    run = make_run(tmp_path)
    (run / "config.yaml").unlink()
    with pytest.raises(ValueError, match="config.yaml"):
        push_to_hub(run, "me/m", api=MockApi(), log=lambda *_: None)
    assert not (run / "final" / "README.md").exists()


def test_push_error_has_context(tmp_path):
    run = make_run(tmp_path)
    err = RuntimeError("boom")
    err.response = SimpleNamespace(status_code=401)
    with pytest.raises(RuntimeError, match=r"pushing .*final to me/m failed: RuntimeError: boom.*hf auth login") as e:
        push_to_hub(run, "me/m", api=MockApi(fail=err), log=lambda *_: None)
    assert e.value.__cause__ is err
    assert (run / "final" / "model.safetensors").read_bytes() == b"not really weights"


def test_push_with_real_hfapi_stubbed(tmp_path, monkeypatch):
    """api=None: push_to_hub builds huggingface_hub.HfApi itself; its two network methods are stubbed."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import CommitInfo, RepoUrl

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", self, repo_id, kw))
        return RepoUrl(f"https://huggingface.co/{repo_id}", endpoint="https://huggingface.co")

    def upload_folder(self, **kw):
        calls.append(("upload_folder", self, kw))
        assert (Path(kw["folder_path"]) / "README.md").is_file()
        return CommitInfo(commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/0123",
                          commit_message=kw["commit_message"], commit_description="", oid="0123",
                          _endpoint="https://huggingface.co")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    run = make_run(tmp_path)
    url = push_to_hub(run, "me/srft-qwen", token="hf_fake", log=lambda *_: None)
    assert url == "https://huggingface.co/me/srft-qwen"
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    api = calls[0][1]
    assert isinstance(api, HfApi) and api.token == "hf_fake" and calls[1][1] is api
    assert calls[0][3]["private"] is False and calls[0][3]["repo_type"] == "model"


def test_push_with_real_hfapi_unreachable_endpoint(tmp_path):
    """The real HfApi, unstubbed, against a closed local port with sockets blocked: the Hub error comes back
    as a RuntimeError naming the folder and the repository."""
    from huggingface_hub import HfApi

    run = make_run(tmp_path)
    with pytest.raises(RuntimeError, match=r"pushing .*final to me/m failed"):
        push_to_hub(run, "me/m", api=HfApi(endpoint="http://127.0.0.1:9", token="hf_fake"), log=lambda *_: None)
    assert (run / "final" / "README.md").is_file()
