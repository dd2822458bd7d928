"""Why plain GeN-SGD stalls on quality.py's digits CNN: its α against curvatures.

Trains GeN-SGD (defaults, ``value_fn`` on an independent batch, seed 0) on
the digits CNN of ``quality.py`` and at a few steps prints, on the full
training set: GeN's α, the full-batch greedy (Cauchy) step |∇L|²/∇LᵀH∇L,
the stability limit 2/λ_max (power iteration on Hessian-vector products),
the expected-loss greedy step of a batch-64 gradient measured on an
independent batch, −E[s/‖u‖]/(E[c/‖u‖²]·E‖u‖) over 32 batch pairs (what GeN's
running means estimate), and the share of batch noise in E‖g_B‖².

Run: ``python -m benchmarks.studies.gen_sgd_diagnosis --out
benchmarks/results/study-gen-sgd-diagnosis.json`` (about a minute).
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import gen_optax
from benchmarks import digits, quality
from benchmarks.quality_problems import QUALITY_PROBLEMS

STEPS, CHECKS, PAIRS = 300, (20, 35, 50, 100, 200, 299), 32


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=None, help="a JSON file")
  args = parser.parse_args()
  rows = []
  problem = QUALITY_PROBLEMS["digits-cnn"]()
  x, y = problem.train
  batches = quality.batch_indices(problem, STEPS, seed=0)
  tx = gen_optax.gen(optax.sgd(1.0), measure_along="current_update")
  params = problem.init(jax.random.key(0))
  state = tx.init(params)
  _, unravel = ravel_pytree(params)

  def loss_on(flat, idx):
    return problem.loss(unravel(flat), (x[idx], y[idx]))

  full_idx = jnp.arange(len(x))
  grad = jax.jit(jax.grad(loss_on))
  hvp = jax.jit(lambda f, idx, v: jax.jvp(lambda p: grad(p, idx), (f,), (v,))[1])

  step = digits.train_step(tx, problem.loss)

  rng = np.random.default_rng(1)
  for t in range(STEPS):
    if t in CHECKS:
      flat = ravel_pytree(params)[0]
      g = grad(flat, full_idx)
      cauchy = float(g @ g / (g @ hvp(flat, full_idx, g)))
      v = jax.random.normal(jax.random.key(1), flat.shape)
      for _ in range(30):
        v = hvp(flat, full_idx, v)
        top = float(jnp.linalg.norm(v))
        v = v / top
      slopes, curvatures, noise, norms = [], [], [], []
      for _ in range(PAIRS):
        b, fresh = (jnp.asarray(rng.choice(len(x), 64, replace=False)) for _ in "ab")
        u = -grad(flat, b)
        norm = float(jnp.linalg.norm(u))
        norms.append(norm)
        slopes.append(float(grad(flat, fresh) @ u) / norm)
        curvatures.append(abs(float(u @ hvp(flat, fresh, u))) / norm**2)
        noise.append(float(jnp.sum((u + g) ** 2)) / norm**2)
      row = {
        "step": t,
        "loss": float(loss_on(flat, full_idx)),
        "gen_alpha": float(state.learning_rate),
        "full_batch_greedy": cauchy,
        "stability_limit": 2 / top,
        "batch_greedy": float(-np.mean(slopes) / np.mean(curvatures) / np.mean(norms)),
        "noise_share": float(np.mean(noise)),
      }
      rows.append(row)
      print(
        f"step {t:3d}  loss {row['loss']:.3f}  GeN α {row['gen_alpha']:.2e}"
        f"  full-batch greedy {cauchy:.2e}  2/λ_max {2 / top:.2e}"
        f"  batch-64 greedy {row['batch_greedy']:.2e}"
        f"  noise share {row['noise_share']:.2f}",
        flush=True,
      )
    i, fresh = batches[t]
    params, state, _ = step(params, state, (x[i], y[i]), (x[fresh], y[fresh]))
  if args.out:
    args.out.write_text(json.dumps({"problem": "digits-cnn", "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
