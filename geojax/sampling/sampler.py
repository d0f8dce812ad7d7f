"""Batched autoregressive sampling for QwenVL: a Sampler built once from a model and its settings, called with
(possibly fresh) parameters, as Tunix's `generate/sampler.py`.

    sampler = Sampler(model, max_new_tokens=64, temperature=1.0, top_p=0.95, eos_token_id=tok.eos_id, num_samples=8)
    result = sampler(state["params"], input_ids, attention_mask, pixel_values, image_grid_thw, rng=jax.random.key(0))
    result.tokens     # int32 [B*G, N], pad_token_id after each row's EOS
    result.logprobs   # float32 [B*G, N], UNscaled policy log-probs log softmax(logits)[token] (0 after EOS)

Row r of the result is sample r % G of prompt r // G (each prompt's G samples in consecutive rows, the layout
`geojax.rl.group_advantages` expects). The model's forward runs once per prompt (prefill), then its KV cache is
tiled G times (`tile="cache"`) or the prompts are tiled before prefill (`tile="prompt"`).

The Sampler splits the model once (`geojax.models.lora.split_params`: its nnx.Params, or a LoRA model's adapters)
and keeps its graph definition (hashed once) and non-parameter state (a LoRA model's frozen base); a call merges
them with the parameters it is given inside one jitted function (prefill and decode loop, `geojax.sampling.loop`),
and, while rows remain after that call's first phase, resumes the loop in the next phase (smaller batch, longer
cache), chosen here on the host from how far the last one got. One compile per static signature: batch and prompt
shapes, image grid, the settings and the model's graph, and per phase shape reached, shared by every Sampler of the
same graph and settings (see `compiled_signatures`). Parameters sharded over a mesh (NamedShardings) are sampled
under that mesh.
"""
from __future__ import annotations

import functools
import weakref
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geojax.data.mrope import rope_index
from geojax.models import lora
from geojax.models.platform import current_platform, device_platform
from geojax.models.vision import grid_tuple
from geojax.sampling.logits import NOISE_WIDTH, SamplingSettings
from geojax.sampling import loop
from geojax.sampling.loop import GenerateResult, Plan

# Draw all steps' sampling noise before the loop when it is at most this many floats (see loop._noise_ahead).
NOISE_AHEAD_MAX = 1 << 22


class _Graph:
  """A model's graph definition, hashed once: jit hashes its static arguments on every call, and hashing a
  QwenVL's graphdef takes 0.3-2 ms."""

  def __init__(self, graphdef):
    self.graphdef = graphdef
    self._hash = hash(graphdef)

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    return self is other or (isinstance(other, _Graph) and self._hash == other._hash
                             and self.graphdef == other.graphdef)


@functools.partial(jax.jit, static_argnames=("graph", "plan", "length"))
def _start_jit(graph: _Graph, params, rest, input_ids, attention_mask, position_ids, pixel_values, rng, head, *,
               plan: Plan, length: int):
  model = nnx.merge(graph.graphdef, params, rest)
  return loop.start(model, input_ids, attention_mask, position_ids, pixel_values, rng, head, plan, length)


@functools.partial(jax.jit, static_argnames=("graph", "plan", "prompt_len", "slots", "length"), donate_argnums=(4,))
def _resume_jit(graph: _Graph, params, rest, state, out, head, *, plan: Plan, prompt_len: int, slots: int,
                length: int):
  """The next phase; the result buffers are donated (the rest changes shape: a phase changes slots or length)."""
  model = nnx.merge(graph.graphdef, params, rest)
  return loop.resume(model, state._replace(out=out), head, plan, prompt_len, slots, length)


def compiled_signatures() -> int:
  """How many distinct static signatures have been compiled so far, first phases and later ones (for tests of the
  compile cache)."""
  return _start_jit._cache_size() + _resume_jit._cache_size()


def _pow2_at_least(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


@functools.cache
def _greedy_key() -> jax.Array:
  """Placeholder key for greedy calls (never drawn from), made once rather than dispatched per call."""
  return jax.random.key(0)


def _eos_tuple(eos_token_id) -> tuple[int, ...]:
  if eos_token_id is None:
    return ()
  if isinstance(eos_token_id, (int, np.integer)):
    return (int(eos_token_id),)
  return tuple(int(e) for e in eos_token_id)


def _embedding(params, rest) -> jax.Array:
  """The token embedding array (the model's language_model.embed_tokens.embedding), in `params` or else (a LoRA
  model's frozen base) in `rest`."""
  tokens = params["language_model"].get("embed_tokens") if "language_model" in params else None
  leaf = (tokens or rest["language_model"]["embed_tokens"])["embedding"]
  return leaf.get_raw_value() if isinstance(leaf, nnx.Variable) else leaf


def _mesh_of(array: jax.Array) -> jax.sharding.Mesh | None:
  """The mesh a parameter lives on (the model's are all placed alike), if it spans more than one device."""
  sharding = getattr(array, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh.size > 1:
    return sharding.mesh
  return None


_transpose = jax.jit(jnp.transpose)


class Sampler:
  """Samples `num_samples` completions of `max_new_tokens` tokens for each LEFT-padded prompt.

  Args:
    model: a geojax.models.QwenVL; split once here (its graph, its non-parameter state and, for `params=None`
      calls, the parameter arrays it has now).
    max_new_tokens: N, the number of decode steps.
    temperature: 0 is greedy (argmax of the raw logits); otherwise logits are divided by it before top-k/top-p.
    top_k: keep the k most likely tokens (None or 0: off).
    top_p: then keep the smallest set whose probability reaches top_p (None or 1.0: off). Order as transformers:
      temperature, top-k, top-p, draw.
    eos_token_id: an id or several; a row stops at the first one (which is kept in its tokens).
    pad_token_id: written after EOS; default the first EOS id (0 without one).
    num_samples: G completions per prompt (rows prompt-major).
    tile: "cache" (prefill B rows, then repeat the cache G times) or "prompt" (prefill B*G rows).
    phases: decode in phases (`geojax.sampling.loop`): the cache grows in buckets and finished rows are dropped
      from the batch; False: one phase at full batch over the full cache (the same tokens; for benchmarks).
  """

  def __init__(self, model, *, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
               pad_token_id: int | None = None, num_samples: int = 1, tile: str = "cache", phases: bool = True):
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if tile not in ("cache", "prompt"):
      raise ValueError(f"tile must be 'cache' or 'prompt', got {tile!r}")
    self.config = model.config
    self.settings = SamplingSettings(temperature, top_k, top_p).check(self.config.text.vocab_size)
    self.max_new_tokens, self.num_samples = int(max_new_tokens), int(num_samples)
    self.tile = "cache" if num_samples == 1 else tile
    self.eos_ids = _eos_tuple(eos_token_id)
    self.pad_id = int(pad_token_id if pad_token_id is not None else self.eos_ids[0] if self.eos_ids else 0)
    graphdef, self.params, self.rest = lora.split_params(model)  # under LoRA: the adapters, the base in rest
    self.graph = _Graph(graphdef)
    self._tied = model.language_model.lm_head is None
    self._head: dict = {}  # {"embedding": weak reference, "head": its [D, V] transpose}, of the last call
    self.phases = bool(phases)
    self.last_phases: list[tuple[int, int, int]] = []  # (slots, cache length, first step) of the last call's phases

  def __call__(self, params=None, input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
               position_ids=None, rng=None) -> GenerateResult:
    """Completions of the prompts under `params` (an nnx.State of the model's nnx.Param variables, a LoRA
    model's adapters; or None for the model's parameters when the Sampler was built).

    Args:
      input_ids: int [B, L] prompts, left-padded (host or device array).
      attention_mask: [B, L], 1 on real tokens; default all ones.
      pixel_values: float [n_patches, 1176] of all images in prompt order, or None.
      image_grid_thw: int [n_images, 3] (host value: it fixes shapes), or None.
      position_ids: int [3, B, L] M-RoPE positions; computed with geojax.data.rope_index when omitted.
      rng: a jax PRNG key; required unless greedy. Step t of every row uses fold_in(rng, t).

    Returns:
      GenerateResult(tokens [B*G, N] int32, logprobs [B*G, N] float32 = UNscaled policy log-probs of the sampled
      tokens (what GRPO needs as old log-probs), sampling_logprobs [B*G, N] float32 = log-probs under the scaled,
      filtered distribution actually sampled (0 when greedy), lengths [B*G] int32). After EOS: pad tokens and
      log-probs 0.
    """
    params, head, plan, inputs = self._prepare(params, input_ids, attention_mask, pixel_values, image_grid_thw,
                                               position_ids, rng)
    mesh = _mesh_of(_embedding(params, self.rest))
    if mesh is None:
      return self._decode(params, head, plan, *inputs)
    with jax.set_mesh(mesh):
      return self._decode(params, head, plan, *inputs)

  def lower(self, params=None, input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
            position_ids=None, rng=None) -> jax.stages.Lowered:
    """The first phase's program for these arguments (the call's), lowered: `.compile()` it to read its HLO or
    memory. `params` may be abstract (jax.ShapeDtypeStruct with shardings), as for a model too big to hold."""
    params, head, plan, inputs = self._prepare(params, input_ids, attention_mask, pixel_values, image_grid_thw,
                                               position_ids, rng)
    buckets = self._buckets(inputs[0].shape[1])
    lower = functools.partial(_start_jit.lower, self.graph, params, self.rest, *inputs, head, plan=plan,
                              length=buckets[0])
    mesh = _mesh_of(_embedding(params, self.rest))
    if mesh is None:
      return lower()
    with jax.set_mesh(mesh):
      return lower()

  def _prepare(self, params, input_ids, attention_mask, pixel_values, image_grid_thw, position_ids, rng):
    """Checks the arguments; returns (params, decode head, plan, the first phase's array arguments)."""
    if input_ids is None:
      raise TypeError("Sampler call needs input_ids")
    if rng is None:
      if not self.settings.greedy:
        raise ValueError("sampling (temperature > 0) needs rng=jax.random.key(...)")
      rng = _greedy_key()
    if isinstance(input_ids, jax.Array) and not input_ids.is_fully_addressable:
      return self._prepare_global(params, input_ids, attention_mask, pixel_values, image_grid_thw, position_ids, rng)
    input_ids = np.asarray(input_ids).astype(np.int32)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [B, L], got shape {input_ids.shape}")
    attention_mask = (np.ones_like(input_ids) if attention_mask is None
                      else np.asarray(attention_mask)).astype(np.int32)
    if attention_mask.shape != input_ids.shape:
      raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
    if attention_mask.shape[1] and not attention_mask[:, -1].all():
      raise ValueError("prompts must be LEFT-padded (attention_mask[:, -1] must be 1 on every row)")
    grid = None if image_grid_thw is None else grid_tuple(image_grid_thw)
    if pixel_values is not None and grid is None:
      raise ValueError("pixel_values given without image_grid_thw")
    if position_ids is None:
      position_ids, _ = rope_index(input_ids, attention_mask, None if grid is None else np.asarray(grid),
                                   spatial_merge_size=self.config.vision.spatial_merge_size,
                                   image_token_id=self.config.image_token_id)
    position_ids = np.asarray(position_ids).astype(np.int32)

    row_images = (self._row_images(input_ids, grid) if self.tile == "prompt" and pixel_values is not None
                  else None)
    return self._planned(params, grid, row_images, (input_ids, attention_mask, position_ids, pixel_values, rng))

  def _planned(self, params, grid, row_images, inputs) -> tuple:
    """(params, decode head, plan, inputs): `_prepare`'s result for checked inputs."""
    rows = inputs[0].shape[0] * self.num_samples
    noise_ahead = not self.settings.greedy and self.max_new_tokens * rows * NOISE_WIDTH <= NOISE_AHEAD_MAX
    params = self.params if params is None else params
    embedding = _embedding(params, self.rest)
    # Copies in the layouts XLA:CPU decodes faster from, for parameters on CPU devices only (TPU and GPU pick their
    # dot layouts themselves). Chosen by where the parameters are, not by this process's default backend: a program
    # compiled here for TPU chips (geojax.plan) must not get them. On CPU the decode loop runs the layers one by one
    # from copies sliced once per phase: in a scan over the stacked layers each step would copy every layer's weights
    # out of the stack (XLA:CPU does not fuse that slice into its dots), 1.3-1.8x the per-step time of the toy and
    # mid-size models (BENCHMARKS.md, scanned layers).
    sharding = getattr(embedding, "sharding", None)  # none: an abstract array placed nowhere yet
    on_cpu = (device_platform(next(iter(sharding.device_set))) if sharding is not None else current_platform()) == "cpu"
    plan = Plan(self.max_new_tokens, self.settings, self.eos_ids, self.pad_id, self.num_samples, self.tile,
                None if inputs[3] is None else grid, noise_ahead, row_images, compact=self.phases and rows > 1,
                layer_list=on_cpu)
    return params, self._decode_head(embedding) if self._tied and on_cpu else None, plan, inputs

  def _prepare_global(self, params, input_ids, attention_mask, pixel_values, image_grid_thw, position_ids, rng):
    """`_prepare` for prompts already placed as global arrays whose rows no process holds whole (each process
    loaded its own rows): attention_mask and position_ids must come with them (int32, as collated); the checks
    that read the prompts were made where they were collated."""
    if attention_mask is None or position_ids is None or image_grid_thw is None and pixel_values is not None:
      raise ValueError("prompts split over processes need attention_mask, position_ids and image_grid_thw")
    if self.tile == "prompt" and pixel_values is not None:
      raise ValueError("tile='prompt' reads the prompts on the host; prompts split over processes need 'cache'")
    grid = None if image_grid_thw is None else grid_tuple(image_grid_thw)
    return self._planned(params, grid, None, (input_ids, attention_mask, position_ids, pixel_values, rng))

  def _buckets(self, prompt_len: int) -> tuple[int, ...]:
    steps = self.max_new_tokens
    return loop.cache_buckets(prompt_len, steps) if self.phases else (loop.cache_length(prompt_len, steps),)

  def _decode(self, params, head, plan: Plan, *inputs) -> GenerateResult:
    """The first phase, then the next ones while rows remain (each waits for the last to end: one sync each)."""
    prompt_len, steps = inputs[0].shape[1], self.max_new_tokens
    buckets = self._buckets(prompt_len)
    slots, length = inputs[0].shape[0] * self.num_samples, buckets[0]
    self.last_phases = [(slots, length, 0)]
    state, (t, live) = _start_jit(self.graph, params, self.rest, *inputs, head, plan=plan, length=length)
    if len(buckets) == 1 and not plan.compact:  # one phase does it all: no need to wait for it
      return GenerateResult(*state.out)
    while True:
      t, live = (int(x) for x in jax.device_get((t, live)))
      if t >= steps or live == 0:
        return GenerateResult(*state.out)
      slots = _pow2_at_least(live) if plan.compact else slots
      length = loop.bucket_for(buckets, prompt_len + t)
      self.last_phases.append((slots, length, t))
      state, (t, live) = _resume_jit(self.graph, params, self.rest, state._replace(out=None), state.out, head,
                                     plan=plan, prompt_len=prompt_len, slots=slots, length=length)

  def _row_images(self, input_ids: np.ndarray, grid) -> tuple[int, ...]:
    """How many of the images (in prompt order) each row holds, from its image-pad tokens."""
    merge = self.config.vision.spatial_merge_size ** 2
    tokens = (input_ids == self.config.image_token_id).sum(axis=1)
    counts, image = [], 0
    for n in tokens:
      start = image
      while n > 0 and image < len(grid):
        n -= int(np.prod(grid[image])) // merge
        image += 1
      if n != 0:
        raise ValueError("image tokens and image features do not match (image_grid_thw against input_ids)")
      counts.append(image - start)
    return tuple(counts)

  def _decode_head(self, embedding: jax.Array) -> jax.Array:
    """The tied embedding transposed to [D, V], kept while the embedding array of the last call lives.

    XLA's CPU dot streams a [V, D] operand contracted on D slower than a [D, V] one (1.3-1.6x), and the LM head is
    the largest matmul of a small model's decode step. Params that change every call (a trainer) pay one transpose
    per call, as a transpose inside the jitted loop would; repeated calls with the same params (evaluation, or
    params=None) pay it once. The copy is dropped with its embedding."""
    if not isinstance(embedding, jax.Array):  # abstract parameters (`lower`)
      return jax.eval_shape(_transpose, embedding)
    ref = self._head.get("embedding")
    if ref is None or ref() is not embedding:
      cell = self._head = {}
      cell["embedding"] = weakref.ref(embedding, lambda _: cell.clear())
      cell["head"] = _transpose(embedding)
    return self._head["head"]
