"""Rollout engines: the interface (`base`) and the transformers engine (`hf`)."""

from srft.rollout.base import RolloutEngine, RolloutOutput, SamplingParams

__all__ = ["RolloutEngine", "RolloutOutput", "SamplingParams"]
