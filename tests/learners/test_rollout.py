"""The GRPO training pass scores exactly the tokens the sampler drew: same ids, same positions, same log-probs."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from geojax import experiment
from geojax import learners
from geojax.learners.rollout import microbatched_logprobs
from geojax.models import grid_tuple
from geojax.models.logprobs import token_logprobs
from geojax.sampling import generate
from tests.train.helpers import tiny_config


def _tiny_prompts(tmp_path, builtin_dir, n: int):
  """A random tiny model on the mesh, its tokenizer, and the first n training records as a collated RL batch."""
  config = tiny_config(str(tmp_path), builtin_dir)
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  with jax.set_mesh(mesh):
    model = experiment.build_model(config, tokenizer, mesh)
  transform = experiment.example_transform(config, tokenizer, "rl")
  batch = transform.collate([transform(r) for r in experiment.load_records(config, "train")[:n]])
  return mesh, model, tokenizer, batch, {k: jnp.asarray(batch[k]) for k in learners.PROMPT_KEYS}


def test_training_logprobs_equal_sampling_logprobs(tmp_path, builtin_dir):
  mesh, model, tokenizer, batch, prompt = _tiny_prompts(tmp_path, builtin_dir, 3)
  with jax.set_mesh(mesh):
    group = 4
    out = generate(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                   batch["image_grid_thw"], position_ids=batch["position_ids"], max_new_tokens=10, temperature=1.0,
                   rng=jax.random.key(3), eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
                   num_samples=group)
    seq = learners.rollout_sequences(prompt, out.tokens, out.lengths, group)
    grid = tuple(g for g in grid_tuple(batch["image_grid_thw"]) for _ in range(group))
    lp = learners.completion_logprobs(model, seq, grid, batch["input_ids"].shape[1])
  mask = np.asarray(out.mask) > 0
  assert mask.sum() > 3 * group
  np.testing.assert_allclose(np.asarray(lp)[mask], np.asarray(out.logprobs)[mask], atol=2e-4)
  np.testing.assert_array_equal(np.asarray(seq["completion_mask"]) > 0, mask)


def test_a_completion_holding_the_image_token_is_read_as_text(tmp_path, builtin_dir):
  """A sampled image-pad id in a completion is text to the sampler; the training pass must read it the same way,
  and it must not shift the image features of the rows after it. Reference: the model's own cached decode path
  (prefill, then one token at a time), teacher-forced on the same completions."""
  mesh, model, _, batch, prompt = _tiny_prompts(tmp_path, builtin_dir, 2)
  with jax.set_mesh(mesh):
    image = model.config.image_token_id
    tokens = jnp.asarray([[17, image, 23, image, 5], [9, 31, 12, 40, 6]], jnp.int32)
    lengths = jnp.asarray([5, 5], jnp.int32)
    grid = grid_tuple(batch["image_grid_thw"])
    prompt_len = batch["input_ids"].shape[1]
    lp = learners.completion_logprobs(model, learners.rollout_sequences(prompt, tokens, lengths, 1), grid, prompt_len)
    cache = model.init_cache(2, prompt_len)
    logits, cache = model.prefill(prompt["input_ids"], prompt["attention_mask"], prompt["position_ids"],
                                  prompt["pixel_values"], grid, cache)
    cache = model.decode_cache(cache, prompt_len + tokens.shape[1])
    ref = []
    for t in range(tokens.shape[1]):
      ref.append(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, t:t + 1], axis=1)[:, 0])
      logits, cache = model.decode_one(tokens[:, t], cache)
  np.testing.assert_allclose(np.asarray(lp), np.stack([np.asarray(r) for r in ref], axis=1), atol=2e-4)


def _rollout_case(tmp_path, builtin_dir, group=3, n_new=6):
  """A tiny model, 2 image prompts and random completions of `group` rows each, as rollout_sequences lays them."""
  mesh, model, _, batch, prompt = _tiny_prompts(tmp_path, builtin_dir, 2)
  tokens = jax.random.randint(jax.random.key(1), (2 * group, n_new), 0, model.config.text.vocab_size)
  lengths = jnp.asarray([n_new, 2, n_new, 4, 1, n_new][:2 * group], jnp.int32)
  grid = tuple(g for g in grid_tuple(batch["image_grid_thw"]) for _ in range(group))
  seq = learners.rollout_sequences(prompt, tokens, lengths, group)
  return mesh, model, seq, grid, batch["input_ids"].shape[1], group


def test_completion_logprobs_equal_the_full_sequence_ones(tmp_path, builtin_dir):
  """The LM head on the completion positions only (token_logprobs start=, and completion_logprobs, whose prompt runs
  once per group) gives the log-probs of those positions in a full pass over every row's whole sequence."""
  mesh, model, seq, grid, prompt_len, group = _rollout_case(tmp_path, builtin_dir)
  ids = seq["input_ids"]
  inputs = ids[:, :-1]
  image_mask = (inputs == model.config.image_token_id) & (jnp.arange(inputs.shape[1]) < prompt_len)[None]
  pixels = seq["pixel_values"]
  pixels = jnp.repeat(pixels.reshape(2, -1, pixels.shape[-1]), group, axis=0).reshape(-1, pixels.shape[-1])
  args = (model, inputs, ids[:, 1:], seq["attention_mask"][:, :-1], pixels, grid, seq["position_ids"][:, :, :-1])
  with jax.set_mesh(mesh):
    full = token_logprobs(*args, image_mask=image_mask, chunk_size=7)
    part = token_logprobs(*args, image_mask=image_mask, chunk_size=7, start=prompt_len - 1)
    lp = learners.completion_logprobs(model, seq, grid, prompt_len, chunk_size=7)
    micro = microbatched_logprobs(model, seq, grid, prompt_len, 2)  # the reference pass under grad_accum 2
  assert part.shape == lp.shape == micro.shape == (ids.shape[0], ids.shape[1] - prompt_len)
  np.testing.assert_allclose(np.asarray(part), np.asarray(full)[:, prompt_len - 1:], atol=1e-5)
  np.testing.assert_allclose(np.asarray(micro), np.asarray(full)[:, prompt_len - 1:], atol=1e-5)
  np.testing.assert_allclose(np.asarray(lp), np.asarray(full)[:, prompt_len - 1:], atol=1e-5)


def test_text_prompts_run_once_per_group(tmp_path, builtin_dir):
  """Text-only prompts (no pixel_values): with group=G each prompt runs once for its G rows; the log-probs are those
  of a full pass over every row's whole sequence, with or without grad_accum micro-batches."""
  mesh, model, _, _, _ = _tiny_prompts(tmp_path, builtin_dir, 1)
  group, n_new, plen = 3, 6, 9
  ids = jax.random.randint(jax.random.key(2), (2, plen), 0, model.config.text.vocab_size)
  ids = jnp.where(ids == model.config.image_token_id, 0, ids)
  pos = jnp.broadcast_to(jnp.arange(plen, dtype=jnp.int32), (3, 2, plen))
  prompt = {"input_ids": ids, "attention_mask": jnp.ones((2, plen), jnp.int32), "position_ids": pos,
            "example_mask": jnp.ones((2,), jnp.int32)}
  tokens = jax.random.randint(jax.random.key(1), (2 * group, n_new), 0, model.config.text.vocab_size)
  seq = learners.rollout_sequences(prompt, tokens, jnp.asarray([n_new, 2, n_new, 4, 1, n_new], jnp.int32), group)
  full_ids = seq["input_ids"]
  with jax.set_mesh(mesh):
    full = token_logprobs(model, full_ids[:, :-1], full_ids[:, 1:], seq["attention_mask"][:, :-1],
                          position_ids=seq["position_ids"][:, :, :-1], chunk_size=7)[:, plen - 1:]
    once = learners.completion_logprobs(model, seq, (), plen, chunk_size=7, group=group)
    micro = microbatched_logprobs(model, seq, (), plen, 2, group)
  assert once.shape == micro.shape == (2 * group, n_new)
  np.testing.assert_allclose(np.asarray(once), np.asarray(full), atol=1e-5)
  np.testing.assert_allclose(np.asarray(micro), np.asarray(full), atol=1e-5)


def test_vision_once_per_prompt_equals_the_repeated_pixels(tmp_path, builtin_dir):
  """Each prompt (and its image) run once for its group: the log-probs and gradients of the path that runs every
  row's copy of the pixels and prompt (pixel_values repeated per row, as rollout_sequences gave them before)."""
  from flax import nnx
  mesh, model, seq, grid, prompt_len, group = _rollout_case(tmp_path, builtin_dir)
  pixels = seq["pixel_values"]
  repeated = dict(seq, pixel_values=jnp.repeat(pixels.reshape(2, -1, pixels.shape[-1]), group, axis=0)
                  .reshape(-1, pixels.shape[-1]))

  def loss(s):
    def fn(m):
      lp = learners.completion_logprobs(m, s, grid, prompt_len)
      return jnp.sum(lp * seq["completion_mask"]), lp
    return fn

  with jax.set_mesh(mesh):
    (_, once), g_once = nnx.value_and_grad(loss(seq), has_aux=True)(model)
    (_, rep), g_rep = nnx.value_and_grad(loss(repeated), has_aux=True)(model)
  np.testing.assert_allclose(np.asarray(once), np.asarray(rep), atol=1e-5)
  g_once, g_rep = dict(nnx.to_flat_state(nnx.state(g_once))), dict(nnx.to_flat_state(nnx.state(g_rep)))
  assert g_once.keys() == g_rep.keys()
  patch = [k for k in g_once if "patch_embed" in k]
  assert patch and float(jnp.abs(g_once[patch[0]].get_value()).max()) > 0  # the vision tower gets gradients
  for k in g_once:
    np.testing.assert_allclose(np.asarray(g_once[k].get_value()), np.asarray(g_rep[k].get_value()), rtol=1e-4,
                               atol=1e-6, err_msg=str(k))


def test_gradient_accumulation_matches_one_batch():
  params = {"w": jnp.arange(6.0).reshape(2, 3)}
  batch = {"x": jnp.linspace(-1, 1, 24).reshape(8, 3), "position_ids": jnp.arange(48).reshape(3, 8, 2) * 0.01}

  def loss_fn(p, b):
    y = b["x"] @ p["w"].T + b["position_ids"].sum(axis=(0, 2))[:, None]
    return jnp.mean(y ** 2), {"m": jnp.mean(y)}

  full = learners.accumulate_grads(loss_fn, params, batch, 1)
  split = learners.accumulate_grads(loss_fn, params, batch, 4)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(split)):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_schedule_warmup_then_cosine():
  config = tiny_config("/tmp/unused", "/tmp/unused")
  sc = config.sft
  with config.unlocked():
    sc.steps, sc.lr, sc.warmup_steps, sc.warmup_ratio, sc.schedule, sc.min_lr_ratio = 100, 1.0, 10, 0.0, "cosine", 0.1
  schedule = learners.learning_rate_schedule(sc)
  assert abs(float(schedule(0)) - 0.1) < 1e-6
  assert abs(float(schedule(10)) - 1.0) < 1e-6
  assert abs(float(schedule(100)) - 0.1) < 1e-6
  assert float(schedule(55)) < 1.0
  with config.unlocked():
    sc.warmup_ratio = 0.2
  assert abs(float(learners.learning_rate_schedule(sc)(20)) - 1.0) < 1e-6
  # frozen parameters (mask False) never move
  tx = learners.make_optimizer(sc, {"a": True, "b": False})
  params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  updates, _ = tx.update({"a": jnp.ones(2), "b": jnp.ones(2)}, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert not np.allclose(new["a"], 1.0) and np.allclose(new["b"], 1.0)


def test_locatability_reward_model_scores_probabilities(tmp_path, builtin_dir):
  """GLOBE's locatability reward from a VLM directory (here a random tiny one written by save_hf)."""
  import shutil
  from geojax.data.tokenizer import TINY_TOKENIZER_PATH
  from geojax.models import save_hf
  config = tiny_config(str(tmp_path / "run"), builtin_dir)
  mesh = experiment.setup_runtime(config)
  tokenizer = experiment.load_tokenizer_for(config)
  with jax.set_mesh(mesh):
    reward_dir = str(tmp_path / "reward_model")
    save_hf(experiment.build_model(config, tokenizer, mesh), reward_dir)
    shutil.copy(TINY_TOKENIZER_PATH, f"{reward_dir}/tokenizer.json")
    reward_model = learners.LocatabilityReward(reward_dir, weight=0.5, mesh=mesh)
    records = experiment.load_records(config, "train")[:3]
    transform = experiment.example_transform(config, tokenizer, "rl")
    batch = transform.collate([transform(r) for r in records])
    total, per = reward_model(["", ""] * 3, batch, group=2)
  scores = per[learners.LOCATABILITY]
  assert scores.shape == (6,) and np.all((scores > 0) & (scores < 1))
  np.testing.assert_array_equal(scores[0::2], scores[1::2])  # one score per prompt, repeated over its group
  np.testing.assert_allclose(total, 0.5 * scores)


def test_completion_logprobs_under_remat_equal_without(tmp_path, builtin_dir):
  """The full-size presets remat every layer: the prefix pass (prompt once per group) must run under each policy
  with the same values and gradients as without remat."""
  from flax import nnx
  mesh, model, seq, grid, prompt_len, group = _rollout_case(tmp_path, builtin_dir)

  def loss(m):
    return jnp.sum(learners.completion_logprobs(m, seq, grid, prompt_len) * seq["completion_mask"])

  with jax.set_mesh(mesh):
    value, grads = nnx.value_and_grad(loss)(model)
    for policy in ("full", "dots"):
      remat = nnx.clone(model)
      remat.language_model.remat_policy = policy
      value_r, grads_r = nnx.value_and_grad(loss)(remat)
      np.testing.assert_allclose(float(value_r), float(value), rtol=1e-6)
      for a, b in zip(jax.tree.leaves(nnx.state(grads_r)), jax.tree.leaves(nnx.state(grads))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
