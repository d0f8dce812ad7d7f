"""Supervised fine-tuning pieces: the answer-token cross-entropy and the vision-tower freezing filters."""
from geojax.sft.freeze import VISION_KEYS, is_frozen, trainable_filter, trainable_mask
from geojax.sft.loss import next_token_targets, sft_loss

__all__ = ["VISION_KEYS", "is_frozen", "next_token_targets", "sft_loss", "trainable_filter", "trainable_mask"]
