"""The paper's analyses as commands (`srft analyze ...`).

- `srft.analyses.token_shift`: the token-probability shift between a base and a tuned model
  (the paper's Figure on SFT moving most tokens' probabilities and RL very few).
- `srft.analyses.dynamics`: learning dynamics, every checkpoint placed by its mean per-token
  NLL on reference response sets.
- `srft.analyses.common`: loading prompts and models, greedy generation and teacher-forced
  log-probs, shared by both.

Each module keeps its arithmetic in pure tensor functions (importable with torch alone,
tested against numbers worked out by hand) apart from the command that loads models and
writes files. Entropy dynamics, the third analysis, is logged during training
(`entropy/rollout`, see docs/metrics.md) and plotted by `srft experiment`.
"""
