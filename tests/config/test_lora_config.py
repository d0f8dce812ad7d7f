"""model.lora.*: what geojax's LoRA cannot do is refused at start, naming the key."""
import os

import pytest

from geojax import config as gconfig
from geojax.config_schema import validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _validate(**overrides):
  config = gconfig.load(os.path.join(ROOT, "configs", "default.py"), [f"{k}={v}" for k, v in overrides.items()])
  validate(config, reads_data=False)


def test_lora_settings_are_checked(tmp_path):
  _validate(**{"model.lora.rank": 16, "model.lora.quantize": "nf4", "model.lora.targets": "all"})
  _validate(**{"model.lora.rank": 8, "model.lora.targets": r"language_model/layers/\d+/mlp/.*"})
  _validate(**{"model.lora.rank": 8, "rollout.layout": "decode"})  # the decode copy is the merged weights
  bad = [({"model.lora.quantize": "nf4"}, "model.lora.quantize.*rank is 0"),
         ({"model.lora.dropout": 0.1}, "model.lora.dropout.*rank is 0"),
         ({"model.lora.rank": 4, "model.lora.quantize": "fp8"}, "model.lora.quantize"),
         ({"model.lora.rank": 4, "model.lora.targets": "q_proj("}, "model.lora.targets"),
         ({"model.lora.rank": 4, "model.lora.alpha": 0.0}, "model.lora.alpha"),
         ({"model.lora.rank": 4, "model.lora.dropout": 1.0}, "model.lora.dropout"),
         ({"model.lora.rank": -1}, "model.lora.rank"),
         ({"model.lora.rank": 4, "model.lora.init_from": str(tmp_path)}, "model.lora.init_from.*adapter_config")]
  for overrides, match in bad:
    with pytest.raises(gconfig.ConfigError, match=match):
      _validate(**overrides)
