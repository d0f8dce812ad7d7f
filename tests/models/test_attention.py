"""Each attention backend that runs on CPU against float64 numpy (outputs and gradients): grouped KV heads,
padding, packed segments, causal masks with an offset (static or known only at run time)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geojax.models import attention as attn

H, KV, D = 4, 2, 16


def numpy_attention(q, k, v, allowed, dout):
  """float64 softmax attention and its gradients (the textbook formulas) for one cotangent dout; a query that sees
  no key outputs 0 and has no gradient."""
  q, k, v, dout = (np.asarray(t, np.float64) for t in (q, k, v, dout))
  groups = q.shape[2] // k.shape[2]
  kh, vh = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)  # head h reads KV head h // groups
  scale = q.shape[-1] ** -0.5
  s = np.where(allowed[:, None], np.einsum("bqhd,bkhd->bhqk", q, kh) * scale, -np.inf)
  p = np.exp(s - np.where(allowed.any(-1)[:, None, :, None], s.max(-1, keepdims=True), 0))
  p /= np.maximum(p.sum(-1, keepdims=True), 1e-300)
  out = np.einsum("bhqk,bkhd->bqhd", p, vh)
  dp = np.einsum("bqhd,bkhd->bhqk", dout, vh)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, kh) * scale
  fold = lambda t: t.reshape(t.shape[0], t.shape[1], k.shape[2], groups, -1).sum(3)
  dk = fold(np.einsum("bhqk,bqhd->bkhd", ds, q) * scale)
  dv = fold(np.einsum("bhqk,bqhd->bkhd", p, dout))
  return out, (dq, dk, dv)


def numpy_allowed(q_ids, kv_ids, causal, offset):
  allowed = q_ids[:, :, None] == kv_ids[:, None, :]
  if causal:
    lq, lk = allowed.shape[1:]
    allowed &= np.arange(lk)[None, :] <= np.arange(lq)[:, None] + offset
  return allowed


def valid_rows(lengths, pads, holes=()):
  """[B, L] validity: row b has pads[b] padding tokens first, then real ones, the rest padding; holes (b, i)."""
  valid = np.zeros((len(lengths), max(p + n for p, n in zip(pads, lengths)) + 3), bool)
  for b, (p, n) in enumerate(zip(pads, lengths)):
    valid[b, p:p + n] = True
  for b, i in holes:
    valid[b, i] = False
  return valid


def case(name, rng):
  """(q, k, v, Mask fields, numpy allowed [B, Lq, Lk], rows to compare [B, Lq])."""
  if name == "causal_padding":  # left padding, right padding and a hole
    valid = valid_rows([26, 30, 33], [7, 0, 2], holes=[(1, 12)])
    lq = lk = valid.shape[1]
    fields = dict(q_valid=valid, kv_valid=None, causal=True, offset=0)
    q_ids = kv_ids = valid.astype(int)
  elif name == "rows_without_keys":  # left and right padding, and queries of a segment no key has (as the blocks'
    valid = valid_rows([26, 30], [9, 0])  # padding rows): they output 0 and get a gradient of 0, dout or not
    lq = lk = valid.shape[1]
    q_ids, kv_ids = valid.astype(int), valid.astype(int)
    q_ids[0, 20:23], q_ids[1, 0] = 5, 7
    fields = dict(q_segment_ids=q_ids, kv_segment_ids=kv_ids, causal=True)
  elif name == "packed_segments":  # vision-style: segments attend within themselves, no causal mask
    lq = lk = 36
    q_ids = kv_ids = np.repeat(np.array([[0, 1, 2, 3], [0, 0, 1, 1]]), [9, 13, 5, 9], axis=1)
    fields = dict(q_segment_ids=q_ids, causal=False)
  else:  # "prefix_offset": continuations after a padded prefix of 11 keys
    lq, prefix = 9, 11
    q_valid = np.ones((2, lq), bool)
    q_valid[1, 6:] = False
    kv_valid = np.concatenate([np.arange(prefix)[None] >= np.array([[0], [4]]), q_valid], axis=1)
    lk = prefix + lq
    fields = dict(q_valid=q_valid, kv_valid=kv_valid, causal=True, offset=prefix)
    q_ids, kv_ids = q_valid.astype(int), kv_valid.astype(int)
  batch = q_ids.shape[0]
  q = rng.normal(size=(batch, lq, H, D)).astype(np.float32)
  k = rng.normal(size=(batch, lk, KV, D)).astype(np.float32)
  v = rng.normal(size=(batch, lk, KV, D)).astype(np.float32)
  allowed = numpy_allowed(q_ids, kv_ids, fields["causal"], fields.get("offset", 0))
  rows = q_ids != 0 if "q_valid" in fields else np.ones(q_ids.shape, bool)
  return q, k, v, fields, allowed, rows


def make_mask(fields, backend="auto"):
  fields = dict(fields)
  if "q_valid" in fields:
    return attn.Mask.from_valid(fields.pop("q_valid"), fields.pop("kv_valid"), backend=backend, **fields)
  kv = fields.get("kv_segment_ids")
  return attn.Mask(jnp.asarray(fields["q_segment_ids"]), None if kv is None else jnp.asarray(kv),
                   causal=fields["causal"], backend=backend)


BACKENDS = {
    "xla": attn.dense_attention,
    "blockwise": attn.blockwise_attention,
    "blockwise_small_blocks": functools.partial(attn.blockwise_attention, block_q=8, block_k=16),
    "splash_interpret": functools.partial(attn.splash_attention, interpret=True),
}
CASES = ("causal_padding", "packed_segments", "prefix_offset", "rows_without_keys")


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("name", CASES)
def test_matches_float64_reference(rng, backend, name):
  q, k, v, fields, allowed, rows = case(name, rng)
  dout = rng.normal(size=q.shape).astype(np.float32) * rows[:, :, None, None]  # padded rows feed nothing back
  want, want_grads = numpy_attention(q, k, v, allowed, dout)
  fn, mask = BACKENDS[backend], make_mask(fields)

  @jax.jit  # one compile beats many eager ops on a busy CPU
  def out_and_grads(q, k, v, dout):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask), q, k, v)
    return out, vjp(dout)

  out, grads = out_and_grads(q, k, v, dout)
  np.testing.assert_allclose(np.asarray(out)[rows], want[rows], atol=2e-5)
  for got, ref in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(got), ref, atol=5e-5)


def test_offset_known_at_run_time(rng):
  """The KV-cache pass: the causal offset (write index) is traced; blockwise skips key blocks past the diagonal."""
  q, k, v, fields, allowed, rows = case("prefix_offset", rng)

  @jax.jit
  def run(q, k, v, offset):
    mask = attn.Mask.from_valid(fields["q_valid"], fields["kv_valid"], causal=True, offset=offset)
    return attn.blockwise_attention(q, k, v, mask, block_q=4, block_k=4), attn.attention(q, k, v, mask)

  want, _ = numpy_attention(q, k, v, allowed, np.zeros_like(q))
  for out in run(q, k, v, jnp.int32(fields["offset"])):
    np.testing.assert_allclose(np.asarray(out)[rows], want[rows], atol=2e-5)


def test_bfloat16_inputs_close_to_float32(rng):
  q, k, v, fields, allowed, rows = case("causal_padding", rng)
  mask = make_mask(fields)
  want = jax.jit(attn.blockwise_attention)(q, k, v, mask)
  run = jax.jit(functools.partial(attn.blockwise_attention, block_q=8, block_k=16))
  got = run(*(jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)), mask)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32)[rows], np.asarray(want)[rows], atol=5e-2)


def test_backend_choice_and_refusal():
  assert attn.check_backend("auto", "cpu") == "blockwise"
  assert attn.check_backend("auto", "tpu") == "splash"
  assert attn.check_backend("auto", "gpu") == "cudnn"
  assert attn.check_backend("xla", "tpu") == "xla"
  for backend, platform in (("splash", "cpu"), ("cudnn", "cpu"), ("cudnn", "tpu"), ("flash", "cpu")):
    with pytest.raises(ValueError, match="model.attention"):
      attn.check_backend(backend, platform)


def test_cudnn_support_rules():
  """Shapes and masks cuDNN's fused attention takes; the rest runs blockwise."""
  bf16 = jnp.zeros((1, 8, 4, 64), jnp.bfloat16)
  valid = jnp.ones((1, 8), bool)
  assert attn.cudnn_supports(bf16, bf16, attn.Mask.from_valid(valid, causal=True))
  assert not attn.cudnn_supports(bf16.astype(jnp.float32), bf16, attn.Mask.from_valid(valid, causal=True))
  assert not attn.cudnn_supports(bf16, bf16, attn.Mask(jnp.zeros((1, 8), jnp.int32)))  # packed segments
  assert not attn.cudnn_supports(bf16, bf16, attn.Mask.from_valid(valid, valid, causal=True, offset=3))


def test_model_with_small_blocks_matches_transformers(hf_checkpoint, rng, monkeypatch):
  """The whole model (vision segments, left-padded text, and a prefill + decode over the KV cache) with blocks of 8
  queries x 8 keys, so every attention runs the multi-block loops."""
  from geojax.data.mrope import rope_index
  from geojax.models import grid_tuple, load_hf
  from tests.models.test_qwen_vl import CASES, _decode, _prefill, forward, hf_logits, make_batch, rel_err
  monkeypatch.setattr(attn, "BLOCK_Q", 8)
  monkeypatch.setattr(attn, "BLOCK_K", 8)
  hf, path = hf_checkpoint("qwen2_5_vl")
  model = load_hf(path, attention="blockwise")  # a config of its own, so jit traces it afresh
  ids, mask, pixels, grids = make_batch(rng, CASES["left_padded_batch_of_3"])
  new = rng.integers(0, 90, size=(ids.shape[0], 1)).astype(np.int32)
  full_ids, full_mask = np.concatenate([ids, new], 1), np.concatenate([mask, np.ones_like(new)], 1)
  full = forward(model, full_ids, full_mask, pixels, grids)
  assert rel_err(full, hf_logits(hf, full_ids, full_mask, pixels, grids), full_mask) <= 1e-4
  pos, _ = rope_index(ids, mask, grids, image_token_id=model.config.image_token_id)
  cache = model.init_cache(ids.shape[0], ids.shape[1] + 3, jnp.float32)
  last, cache = _prefill(model, ids, mask, pos, pixels, grid_tuple(grids), cache)
  logits, _ = _decode(model, jnp.asarray(new[:, 0]), cache)
  scale = np.abs(full).max()
  np.testing.assert_allclose(np.asarray(last), full[:, -2], atol=1e-4 * scale)
  np.testing.assert_allclose(np.asarray(logits), full[:, -1], atol=1e-4 * scale)
