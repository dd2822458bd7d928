"""GeN on 8 host devices: jit with NamedSharding, and shard_map with axis_name.

Collected only in a process started with 8 CPU devices (tests/test_multidevice.py
starts one); see tests/conftest.py.
"""

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gen_optax

STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, "run with --xla_force_host_platform_device_count=8"


def _problem():
  key = jax.random.key(0)
  kx, kw = jax.random.split(key)
  x = jax.random.normal(kx, (STEPS, 2, 64, 16))  # step, (gradient, value_fn) batch
  y = jnp.tanh(x @ jnp.linspace(-1.0, 1.0, 16))
  kw, kv = jax.random.split(kw)
  # No zero-initialised layer: a zero gradient makes Adam's m/√v amplify rounding.
  params = {
    "w": jax.random.normal(kw, (16, 32)) / 4,
    "v": jax.random.normal(kv, (32,)) / 8,
  }
  return params, x, y


def _loss(p, x, y):
  return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] - y) ** 2)


def _train(params, x, y, tx, place=lambda tree, spec: tree, specs=None):
  @jax.jit
  def step(p, s, xb, yb, xf, yf):
    grads = jax.grad(_loss)(p, xb, yb)
    updates, s = tx.update(grads, s, p, value_fn=lambda q: _loss(q, xf, yf))
    return optax.apply_updates(p, updates), s

  p = place(params, specs)
  s = tx.init(p)
  for t in range(STEPS):
    batch = [place(a[t, i], P("data")) for i in (0, 1) for a in (x, y)]
    p, s = step(p, s, batch[0], batch[1], batch[2], batch[3])
  return p, s


@pytest.mark.parametrize(
  ("mesh_shape", "axis_type", "param_specs"),
  [
    # Data parallel, with jax's default (explicit) sharding in types.
    ((8, 1), None, {"w": P(), "v": P()}),
    # Data and parameter sharding, with the compiler choosing the rest (GSPMD).
    ((2, 4), AxisType.Auto, {"w": P(None, "model"), "v": P("model")}),
  ],
  ids=["data_parallel", "data_and_model_parallel"],
)
@pytest.mark.parametrize(
  "mode", ["forward-over-reverse", "forward-over-forward", "probes"]
)
def test_sharded_jit_matches_single_device(mesh_shape, axis_type, param_specs, mode):
  params, x, y = _problem()
  # No growth bounds: α then comes from the measurements, which must agree.
  tx = gen_optax.gen(optax.adam(1.0), mode=mode, warmup_growth=None, max_growth=None)
  single = _train(params, x, y, tx)

  axis_types = None if axis_type is None else (axis_type, axis_type)
  mesh = jax.make_mesh(mesh_shape, ("data", "model"), axis_types)

  def place(tree, spec):
    if isinstance(spec, dict):
      return jax.tree.map(
        lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), tree, spec
      )
    return jax.device_put(tree, NamedSharding(mesh, spec))

  sharded = _train(params, x, y, tx, place, param_specs)
  assert len(sharded[0]["w"].sharding.device_set) == 8
  # Same maths, another reduction order: float32 rounding only. Exact modes:
  # α to 1e-5, parameters (size ~0.5) to 1e-4, since Adam's m/√v amplifies
  # rounding where a gradient is nearly zero. Probes difference losses, which
  # cancels ~4 digits: α and parameters to 1e-2.
  alpha_tol, param_tol = (1e-2, 1e-2) if mode == "probes" else (1e-5, 1e-4)
  np.testing.assert_allclose(
    sharded[1].learning_rate, single[1].learning_rate, rtol=alpha_tol
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=param_tol, atol=param_tol),
    sharded[0],
    single[0],
  )
  assert int(sharded[1].rule.num_accepted) == int(single[1].rule.num_accepted)
  # The stored previous step is sharded like the parameters.
  jax.tree.map(
    lambda d, p: assert_same_layout(d.sharding, p.sharding, d.ndim),
    sharded[1].previous_step,
    sharded[0],
  )


def assert_same_layout(a, b, ndim):
  assert a.is_equivalent_to(b, ndim), (a, b)


def _replicas(axis_name):
  """Per-device training with shard_map; returns every replica's params and α."""
  params, x, y = _problem()
  mesh = jax.make_mesh((8,), ("data",))
  # No growth bounds: they could give every replica the same α regardless.
  tx = gen_optax.gen(
    optax.adam(1.0), axis_name=axis_name, warmup_growth=None, max_growth=None
  )

  @jax.jit
  @functools.partial(
    jax.shard_map,
    mesh=mesh,
    in_specs=(P(), P(None, None, "data"), P(None, None, "data")),
    out_specs=(P("data"), P("data")),
    # Without axis_name, jvp-of-grad mixes replicated tangents with per-device
    # data, which check_vma refuses (with axis_name, gen marks them varying).
    check_vma=axis_name is not None,
  )
  def train(p, xs, ys):
    s = tx.init(p)
    for t in range(STEPS):
      grads = jax.lax.pmean(jax.grad(_loss)(p, xs[t, 0], ys[t, 0]), "data")
      updates, s = tx.update(
        grads, s, p, value_fn=lambda q, t=t: _loss(q, xs[t, 1], ys[t, 1])
      )
      p = optax.apply_updates(p, updates)
    return jax.tree.map(lambda a: a[None], p), s.learning_rate[None]

  data = NamedSharding(mesh, P(None, None, "data"))
  return train(params, jax.device_put(x, data), jax.device_put(y, data))


def test_shard_map_axis_name_keeps_replicas_bit_identical():
  params, learning_rates = jax.tree.map(np.asarray, _replicas("data"))
  for leaf in jax.tree.leaves(params):
    assert all(np.array_equal(leaf[0], leaf[i]) for i in range(8))
  assert np.all(learning_rates == learning_rates[0])

  drifting_params, drifting_rates = jax.tree.map(np.asarray, _replicas(None))
  assert np.max(drifting_rates) - np.min(drifting_rates) > 0
  assert not np.array_equal(drifting_params["w"][0], drifting_params["w"][1])


@pytest.mark.parametrize(("page", "blocks"), [("sharding", 2), ("multihost", 1)])
def test_howto_runs_on_eight_devices(page, blocks):
  """The many-devices how-tos, whose assertions compare sharded runs with
  one-device runs or check the state's layout: on one device (the default
  test process) they hold trivially; here arrays are split over 8 devices."""
  path = Path(__file__).parents[2] / "docs" / "howto" / f"{page}.md"
  namespace: dict = {"__name__": f"howto_{page}"}
  found = re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)
  assert len(found) == blocks
  for block in found:
    exec(compile(block, str(path), "exec"), namespace)
  assert namespace["mesh"].size == 8
