"""GRPO math as pure JAX functions: advantage estimators, KL estimators, loss aggregations, the clipped loss,
and DAPO-style dynamic sampling. No model code: the trainer passes log-probabilities in.

Estimators are registered by name (`ADVANTAGE_ESTIMATORS`, `KL_ESTIMATORS`, `AGGREGATIONS`) so that a config
string selects them and a new one is one decorated function.
"""
from geojax.rl.advantages import (ADVANTAGE_ESTIMATORS, MULTI_REWARD_KINDS, group_advantages, register_advantage,
                                  reward_advantages)
from geojax.rl.aggregation import AGGREGATIONS, register_aggregation
from geojax.rl.dynamic_sampling import group_rows, informative_groups, select_groups
from geojax.rl.kl import KL_ESTIMATORS, register_kl
from geojax.rl.loss import grpo_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "KL_ESTIMATORS", "MULTI_REWARD_KINDS", "group_advantages",
    "group_rows", "grpo_loss", "informative_groups", "register_advantage", "register_aggregation", "register_kl",
    "reward_advantages", "select_groups",
]
