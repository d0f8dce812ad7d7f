"""geojax.learners: the training algorithms as a library; the entry points only wire them.

  Learner                       train state, optimizer, checkpoints and exact resume, the loop   (learner.py)
  SFTLearner                    supervised fine-tuning on answer texts                           (sft.py)
  GRPOLearner                   GRPO with explicit roles: rollout, rewards, reference, advantage (grpo.py)
  RolloutSource, DynamicSampling, Rollout, rollout_sequences, completion_logprobs                (rollout.py)
  GeoRewards, LocatabilityReward, FunctionReward, CombinedRewards, rewards_from_config           (rewards.py)
  learning_rate_schedule, make_optimizer, accumulate_grads, apply_update                         (optim.py)
"""
from geojax.learners.grpo import GRPOLearner, GroupAdvantage, ReferencePolicy, policy_sampler
from geojax.learners.learner import Learner
from geojax.learners.optim import accumulate_grads, apply_update, learning_rate_schedule, make_optimizer
from geojax.learners.rewards import (LOCATABILITY, CombinedRewards, FunctionReward, GeoRewards, LocatabilityReward,
                                     RewardFunction, as_reward, rewards_from_config)
from geojax.learners.rollout import (PROMPT_KEYS, DynamicSampling, Rollout, RolloutSource, Sampled,
                                     completion_logprobs, informative_count, rollout_metrics,
                                     rollout_sequences, select_informative)
from geojax.learners.sft import SFTLearner

LEARNERS = {"sft": SFTLearner, "grpo": GRPOLearner}

__all__ = ["LEARNERS", "LOCATABILITY", "PROMPT_KEYS", "CombinedRewards", "DynamicSampling", "FunctionReward",
           "GRPOLearner", "GeoRewards", "GroupAdvantage", "Learner", "LocatabilityReward", "ReferencePolicy",
           "RewardFunction", "Rollout", "RolloutSource", "SFTLearner", "Sampled", "accumulate_grads", "apply_update",
           "as_reward", "completion_logprobs", "informative_count", "learning_rate_schedule",
           "make_optimizer", "policy_sampler", "rewards_from_config", "rollout_metrics", "rollout_sequences",
           "select_informative"]
