"""GRPO math as pure JAX functions: advantage estimators, KL estimators, loss aggregations, policy-loss terms
(GRPO's PPO clip, GSPO, CISPO), the rollout/trainer mismatch correction, the loss, and DAPO-style dynamic sampling.
No model code: the trainer passes log-probabilities in.

Pieces are registered by name (`ADVANTAGE_ESTIMATORS`, `KL_ESTIMATORS`, `AGGREGATIONS`, `POLICY_LOSSES`) so that a
config string selects them and a new one is one decorated function.
"""
from geojax.rl.advantages import (ADVANTAGE_ESTIMATORS, DEFAULT_EPS, MULTI_REWARD_KINDS, group_advantages,
                                  register_advantage, reward_advantages)
from geojax.rl.aggregation import (AGGREGATIONS, RENAMED_AGGREGATIONS, aggregate, aggregation, batch_count,
                                   register_aggregation)
from geojax.rl.correction import MIS_LEVELS, rollout_correction
from geojax.rl.dynamic_sampling import group_rows, informative_groups, select_groups
from geojax.rl.kl import KL_ESTIMATORS, register_kl
from geojax.rl.loss import batch_counts, grpo_loss
from geojax.rl.policy import POLICY_LOSSES, PolicyTerm, register_policy_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "DEFAULT_EPS", "KL_ESTIMATORS", "MIS_LEVELS", "MULTI_REWARD_KINDS",
    "POLICY_LOSSES", "PolicyTerm", "RENAMED_AGGREGATIONS", "aggregate", "aggregation", "batch_count", "batch_counts",
    "group_advantages", "group_rows", "grpo_loss", "informative_groups", "register_advantage",
    "register_aggregation", "register_kl", "register_policy_loss", "reward_advantages", "rollout_correction",
    "select_groups",
]
