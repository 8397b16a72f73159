"""srft: Supervised Reinforcement Fine-Tuning (SRFT, arXiv 2506.19767) and its baselines.

Layout (see docs/architecture.md): `losses` (pure tensor functions), `objective`
(the SRFT objective and presets), `rollout` (engines), `rewards`, `data`,
`trainer`, `evaluation`, `metrics`, `plots`, `testbed`, `cli`; `api` (`SRFTTrainer`, `SRFTConfig`:
the Python entry point).
"""

__version__ = "0.1.0"

__all__ = ["GRPOConfig", "SFTConfig", "SRFTConfig", "SRFTTrainer", "__version__"]


def __getattr__(name):  # `from srft import SRFTTrainer` without importing torch for `import srft`
    if name in ("SRFTConfig", "SRFTTrainer", "GRPOConfig", "SFTConfig"):
        from srft import api  # deferred: the trainer's imports (torch, transformers, accelerate) load on first use

        return getattr(api, name)
    raise AttributeError(f"module 'srft' has no attribute {name!r}")
