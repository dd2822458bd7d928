"""The benchmarks' one problem type, and the models the cost benchmark times.

A :class:`Problem` is a model with its loss, data and metric; the quality
benchmark's fourteen (``quality_problems.py``) and the cost benchmark's three
(here: an MLP, a small CNN and a small transformer LM, in Flax Linen, on
random data: timing does not depend on values) are all of this type.
"""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Split = Literal["select", "report", "timing"]


class Problem(NamedTuple):
  """A model, its data, its metric and its place in the split."""

  name: str
  kind: str  # one line: what the problem is
  split: Split  # quality's halves, or "timing" (cost only)
  init: Callable[[jax.Array], Any]  # key -> params
  loss: Callable[[Any, Any], jax.Array]  # (params, batch) -> scalar
  train: Any  # (x, y) arrays
  test: Any
  metric: Callable[[Any, Any], jax.Array]  # (params, data) -> held-out metric
  metric_name: str
  higher_is_better: bool  # of the metric
  batch_size: int | None  # None: full batch (a deterministic loss)
  steps: int
  # Whether runs may be batched with jax.vmap and lax.scan.  Not for
  # convolutions and attention: XLA:CPU runs a convolution inside a loop body
  # several times slower (jax-ml/jax#12868) and vmapping one over parameters
  # makes it a slow grouped convolution.
  vectorize: bool


def sample_batch(problem: Problem, key: jax.Array) -> Any:
  """``batch_size`` random rows of the training data (all of it if None)."""
  if problem.batch_size is None:
    return problem.train
  n = len(jax.tree.leaves(problem.train)[0])
  rows = jax.random.choice(key, n, (problem.batch_size,), replace=False)
  return jax.tree.map(lambda a: a[rows], problem.train)


class MLP(nn.Module):
  """784-512-512-10 ReLU network."""

  @nn.compact
  def __call__(self, x):
    for width in (512, 512):
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(10)(x)


class CNN(nn.Module):
  """Two convolutions and two dense layers on 28x28 images."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(64, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


class Block(nn.Module):
  """Pre-norm transformer block with causal self-attention."""

  dim: int
  heads: int

  @nn.compact
  def __call__(self, x):
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(self.heads)(h, h, mask=mask)
    h = nn.LayerNorm()(x)
    return x + nn.Dense(self.dim)(nn.gelu(nn.Dense(4 * self.dim)(h)))


class TransformerLM(nn.Module):
  """A character-level decoder-only transformer."""

  vocab: int = 256
  dim: int = 128
  layers: int = 2
  heads: int = 4
  length: int = 128

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.dim)(tokens)
    x = x + self.param(
      "position", nn.initializers.normal(0.02), (self.length, self.dim)
    )
    for _ in range(self.layers):
      x = Block(self.dim, self.heads)(x)
    return nn.Dense(self.vocab)(nn.LayerNorm()(x))


def _timing(name: str, kind: str, module: nn.Module, train: Any, batch_size: int):
  """A cost-only problem: random data of 4 batches, cross-entropy loss."""

  def loss(params, batch):
    x, y = batch
    logits = module.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return Problem(
    name=name,
    kind=kind,
    split="timing",
    init=lambda key: module.init(key, train[0][:1]),
    loss=loss,
    train=train,
    test=train,
    metric=loss,
    metric_name="loss",
    higher_is_better=False,
    batch_size=batch_size,
    steps=0,
    vectorize=False,
  )


def _images(shape: tuple[int, ...], n: int) -> tuple[jax.Array, jax.Array]:
  kx, ky = jax.random.split(jax.random.key(1))
  return jax.random.normal(kx, (n, *shape)), jax.random.randint(ky, (n,), 0, 10)


def mlp(batch_size: int = 256) -> Problem:
  """MLP 784-512-512-10 on batches of flattened 28x28 inputs."""
  data = _images((784,), 4 * batch_size)
  return _timing("mlp", "MLP 784-512-512-10", MLP(), data, batch_size)


def cnn(batch_size: int = 128) -> Problem:
  """Two-conv CNN on batches of 28x28x1 images."""
  data = _images((28, 28, 1), 4 * batch_size)
  return _timing("cnn", "two-conv CNN, 28x28x1", CNN(), data, batch_size)


def transformer(batch_size: int = 16, length: int = 128) -> Problem:
  """2-layer, width-128 character transformer on sequences of 128 tokens."""
  tokens = jax.random.randint(jax.random.key(1), (4 * batch_size, length + 1), 0, 256)
  data = (tokens[:, :-1], tokens[:, 1:])
  module = TransformerLM(length=length)
  return _timing("transformer", "2-layer character LM", module, data, batch_size)


TIMED_MODELS: dict[str, Callable[[], Problem]] = {
  "mlp": mlp,
  "cnn": cnn,
  "transformer": transformer,
}
