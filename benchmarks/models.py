"""Benchmark models: an MLP, a small CNN and a small transformer LM (Flax Linen).

Each ``Problem`` holds initial parameters, a loss ``loss(params, batch)`` and a
function drawing a batch; data are random (timing does not depend on values).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class Problem(NamedTuple):
  """A model with its loss and a batch sampler."""

  name: str
  params: Any
  loss: Callable[[Any, Any], jax.Array]
  batch: Callable[[jax.Array], Any]  # key -> batch


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


def _classification(module, x_shape, batch_size):
  def batch(key):
    kx, ky = jax.random.split(key)
    return (
      jax.random.normal(kx, (batch_size, *x_shape)),
      jax.random.randint(ky, (batch_size,), 0, 10),
    )

  def loss(params, batch):
    x, y = batch
    logits = module.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  params = module.init(jax.random.key(0), batch(jax.random.key(1))[0])
  return params, loss, batch


def mlp(batch_size: int = 256) -> Problem:
  """MLP 784-512-512-10 on batches of flattened 28x28 inputs."""
  return Problem("mlp", *_classification(MLP(), (784,), batch_size))


def cnn(batch_size: int = 128) -> Problem:
  """Two-conv CNN on batches of 28x28x1 images."""
  return Problem("cnn", *_classification(CNN(), (28, 28, 1), batch_size))


def transformer(batch_size: int = 16, length: int = 128) -> Problem:
  """2-layer, width-128 character transformer on sequences of 128 tokens."""
  module = TransformerLM(length=length)

  def batch(key):
    return jax.random.randint(key, (batch_size, length + 1), 0, 256)

  def loss(params, tokens):
    logits = module.apply(params, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  params = module.init(jax.random.key(0), batch(jax.random.key(1))[:, :-1])
  return Problem("transformer", params, loss, batch)


PROBLEMS: dict[str, Callable[[], Problem]] = {
  "mlp": mlp,
  "cnn": cnn,
  "transformer": transformer,
}
