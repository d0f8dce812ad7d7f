"""QwenVLConfig.from_hf on configs built by transformers: every field transformers' modeling code reads is honoured
or refused with an error naming it, never silently ignored (a hidden_act of gelu was ignored: logits off by 4%)."""
import os
import re

import pytest

from geojax.models import QwenVLConfig
from geojax.models.config import HF_FIELDS
from tests.models import tiny_hf

VERSIONS = ["qwen2_vl", "qwen2_5_vl"]


def hf_dict(version, text=None, vision=None, **top):
  """The config.json dict transformers writes for the tiny config of tests/models with fields overridden."""
  from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
  base = tiny_hf.hf_config(version).to_dict()
  text_config = {k: v for k, v in base["text_config"].items() if k != "layer_types"}
  text_config.update(text or {})
  vision_config = dict(base["vision_config"], **(vision or {}))
  ids = {k: base[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
  cls = Qwen2VLConfig if version == "qwen2_vl" else Qwen2_5_VLConfig
  return cls(text_config=text_config, vision_config=vision_config, **{**ids, **top}).to_dict()


@pytest.mark.parametrize("version", VERSIONS)
def test_supported_configs_load_and_round_trip(version):
  config = QwenVLConfig.from_hf(hf_dict(version))
  assert config.text.hidden_size == 48 and config.version == version
  assert QwenVLConfig.from_hf(config.to_hf()) == config


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("text, vision, field", [
    ({"hidden_act": "gelu"}, None, r"text_config\.hidden_act = 'gelu'"),
    ({"hidden_act": "gelu_pytorch_tanh"}, None, r"text_config\.hidden_act"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4, "mrope_section": [2, 2, 2]}},
     None, r"text_config\.rope_parameters\.rope_type = 'linear'"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4, "mrope_section": [2, 2, 2]}},
     None, r"rope_type = 'dynamic'"),
    ({"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}, None,
     r"text_config\.use_sliding_window"),
    ({"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 16}, None, r"text_config\.layer_types"),
    ({"attention_dropout": 0.1}, None, r"text_config\.attention_dropout = 0\.1"),
    ({"head_dim": 8}, None, r"text_config\.head_dim = 8"),
    (None, {"hidden_act": "relu"}, r"vision_config\.hidden_act = 'relu'"),
])
def test_unsupported_values_are_refused_naming_the_field(version, text, vision, field):
  with pytest.raises(ValueError, match=field):
    QwenVLConfig.from_hf(hf_dict(version, text, vision))


@pytest.mark.parametrize("version", VERSIONS)
def test_honoured_values(version):
  """Values geojax computes as transformers does: head_dim equal to hidden / heads, another vision activation,
  the legacy mrope rope type, a text config asking to tie (pre-v5 saves)."""
  config = QwenVLConfig.from_hf(hf_dict(version, {"head_dim": 12, "attention_dropout": 0.0},
                                        {"hidden_act": "gelu_pytorch_tanh"}))
  assert config.vision.hidden_act == "gelu_pytorch_tanh"
  tied_text = hf_dict(version)
  tied_text["tie_word_embeddings"] = False
  tied_text["text_config"]["tie_word_embeddings"] = True
  from transformers import AutoConfig
  assert AutoConfig.for_model(**tied_text).tie_word_embeddings  # what transformers makes of it
  assert QwenVLConfig.from_hf(tied_text).text.tie_word_embeddings


def flat_published(**changes):
  """The flat layout of the published Qwen2-VL checkpoints' config.json (text fields at the top level)."""
  d = {"model_type": "qwen2_vl", "vocab_size": 128, "hidden_size": 48, "intermediate_size": 96,
       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
       "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768, "use_sliding_window": False,
       "sliding_window": 32768, "max_window_layers": 2, "attention_dropout": 0.0, "tie_word_embeddings": False,
       "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 2]},
       "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 48, "num_heads": 2, "mlp_ratio": 2,
                         "hidden_act": "quick_gelu", "in_chans": 3, "spatial_patch_size": 14, "patch_size": 14}}
  d.update(changes)
  return d


def test_flat_published_layout():
  config = QwenVLConfig.from_hf(flat_published())
  assert config.text.mrope_section == (2, 2, 2) and config.text.rope_theta == 10000.0
  with pytest.raises(ValueError, match=r"unsupported Hugging Face config field hidden_act = 'gelu'"):
    QwenVLConfig.from_hf(flat_published(hidden_act="gelu"))
  with pytest.raises(ValueError, match=r"field rope_scaling\.rope_type = 'yarn'"):
    QwenVLConfig.from_hf(flat_published(rope_scaling={"type": "yarn", "factor": 4.0, "mrope_section": [2, 2, 2]}))
  with pytest.raises(ValueError, match=r"field use_sliding_window"):
    QwenVLConfig.from_hf(flat_published(use_sliding_window=True))


@pytest.mark.parametrize("version", VERSIONS)
def test_every_field_transformers_reads_is_audited(version):
  """The fields transformers' modeling code reads (config.X, getattr(config, "X")): each has an entry in HF_FIELDS,
  so a new one in a later transformers fails here until it is honoured or refused."""
  import transformers
  path = os.path.join(os.path.dirname(transformers.__file__), "models", version, f"modeling_{version}.py")
  with open(path) as f:
    source = f.read()
  fields = set(re.findall(r"(?=config\.([A-Za-z_]\w*))", source))  # overlapping: config.vision_config.X too
  fields |= set(re.findall(r"getattr\(\w*config, \"(\w+)\"", source))
  fields -= {"get_text_config"}  # a method, not a field
  missing = sorted(fields - set(HF_FIELDS))
  assert not missing, f"fields transformers reads that from_hf does not audit: {missing}"
