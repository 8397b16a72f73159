"""Where the config object goes while a trainer is built: every srft function that receives the
config (`srft.config.Config`), one of its sections (ModelConfig, DataConfig, ...) or an object
holding it (`self.cfg`) as an argument during `Trainer(cfg)`, counted at run time with a
profiler hook. The run evaluates on a small benchmark file through `eval.protocol srft-fast`, so
the evaluation-set path is followed too.

    python scripts/config_path.py [SRC_DIR] [--inputs-ready]

SRC_DIR (default: this tree) is the folder holding the `srft` package to measure, so that an
older checkout can be measured the same way (`git worktree add /tmp/old e28ba61`, then
`python scripts/config_path.py /tmp/old`). A tiny random model is built in a temporary folder;
the run trains on the testbed's prompts for 0 steps (only the constructor runs). With
--inputs-ready (this tree only), the run's inputs are built first by
`srft.run_inputs.prepare_run`, as `srft.api.SRFTTrainer` does, and only the trainer's
construction is followed. Prints the
stops (module.function, in the order first reached), the number of distinct stops and of
distinct modules, and the number of times the path climbs back to a module it had left
(a call from module B returning to module A and A then calling on: counted as a return into a
module other than the one just left).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def _benchmark_file(folder: Path) -> Path:
    """A 4-row math benchmark in the verl parquet layout."""
    import pandas as pd
    from conftest import verl_row

    rows = [verl_row(i, f"What is {i} + {i}?", f"<think>{i}+{i}</think>\\boxed{{{2 * i}}}", str(2 * i),
                     source="math500") for i in range(4)]
    path = folder / "bench.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def main(argv: list[str]) -> int:
    ready = "--inputs-ready" in argv
    argv = [a for a in argv if a != "--inputs-ready"]
    src = Path(argv[0]).resolve() if argv else Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(src))
    import srft
    import srft.config as C

    assert Path(srft.__file__).resolve().parent.parent == src, f"srft imported from {srft.__file__}, not {src}"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_model  # the tests' tiny model builder

    from srft.trainer import Trainer

    kinds = (C.Config, C.ModelConfig, C.DataConfig, C.RolloutConfig, C.ObjectiveConfig, C.OptimConfig, C.TrainConfig,
             C.EvalConfig)
    stops: list[str] = []
    seen: set[str] = set()
    modules_in_order: list[str] = []

    def profiler(frame, event, arg):
        if event != "call":
            return
        mod = frame.f_globals.get("__name__", "")
        if not mod.startswith("srft") or "__create_fn__" in getattr(frame.f_code, "co_qualname", ""):
            return  # (dataclasses' generated __init__ of the config itself is no stop)
        code = frame.f_code
        args = [frame.f_locals.get(n) for n in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]]
        if any(isinstance(a, kinds) or isinstance(getattr(a, "cfg", None), C.Config) for a in args):
            name = f"{mod}.{code.co_qualname if hasattr(code, 'co_qualname') else code.co_name}"
            if name not in seen:
                seen.add(name)
                stops.append(name)
            modules_in_order.append(mod)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(Path(tmp) / "model")
        cfg = C.apply_overrides(C.Config(), {"model.name_or_path": str(model_dir), "train.output_dir": f"{tmp}/run",
                                             "train.max_steps": 1, "eval.limit": 2, "eval.protocol": "srft-fast",
                                             "eval.benchmark": str(_benchmark_file(Path(tmp)))}, "config_path")
        inputs = {}
        if ready:
            from srft.run_inputs import prepare_run

            inputs = {"inputs": prepare_run(cfg)}
            cfg = inputs["inputs"].cfg
        sys.setprofile(profiler)
        try:
            Trainer(cfg, log=lambda *a: None, **inputs)
        finally:
            sys.setprofile(None)
    modules = sorted(set(modules_in_order))
    climbs = sum(1 for i in range(2, len(modules_in_order))
                 if modules_in_order[i] != modules_in_order[i - 1] and modules_in_order[i] in modules_in_order[:i - 1])
    for s in stops:
        print(f"  {s}")
    print(f"config path from Trainer.__init__: {len(stops)} stops in {len(modules)} modules "
          f"({', '.join(modules)}); {climbs} calls back into a module visited before")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
