"""srft: Supervised Reinforcement Fine-Tuning (SRFT, arXiv 2506.19767) and its baselines.

Layout (see docs/architecture.md): `losses` (pure tensor functions), `objective`
(the SRFT objective and presets), `rollout` (engines), `rewards`, `data`,
`trainer`, `evaluation`, `metrics`, `plots`, `testbed`, `cli`.
"""

__version__ = "0.1.0"
