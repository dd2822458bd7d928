"""The language-model case at scale: GeN-AdamW against a tuned AdamW schedule.

A decoder-only transformer in Flax NNX, trained on bytes of the Python
standard library's own ``.py`` sources (sorted by file name; the last 5% of
the bytes are the held-out split), with the same initialisation and batch
order for every method:

* AdamW (b1 0.9, b2 0.95, weight decay 0.1) with a 2% linear warm-up and
  cosine decay to 0, at three peak rates around the usual GPT-2 range;
* GeN-AdamW with the library's defaults, the measurement fused with the
  gradient (``gen_optax.value_and_grad``), refreshing every step, and every 8
  steps (the static ``refresh`` flag: two compiled steps);
* GeN-AdamW given the run's length (``total_steps``);
* prodigy (``optax.contrib.prodigy``, its defaults, weight decay 0.1).

``--size small`` (2 layers, width 128, context 64, batch 16) is the CPU smoke
run; ``--size gpt2-small`` (12 layers, width 768, 12 heads, context 512,
bfloat16 compute) is the accelerator check.  ``--budget-seconds`` plans the
number of steps (the same for every method) from a timed warm-up of each
method so that the whole run fits the budget; ``--steps`` fixes it instead.

Output: per method the final training loss (on 8 fixed training batches) and
held-out loss (8 held-out batches), the step time as a ratio to the AdamW
step (median of the timed steps), α over the run for GeN, the compiled
memory of a step; JSON with the command and the device, and a figure.

Run: ``python -m benchmarks.gpu_lm --size gpt2-small --budget-seconds 420
--out benchmarks/results/gpu-lm.json`` on a device (about 8 minutes);
``python -m benchmarks.gpu_lm --size small --steps 30`` on a CPU.
"""

import argparse
import json
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx

import gen_optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

VOCAB = 256  # bytes
PEAKS = (3e-4, 6e-4, 1.2e-3)
WARMUP = 0.02


class Size(NamedTuple):
  layers: int
  width: int
  heads: int
  context: int
  batch: int
  dtype: Any  # compute dtype; parameters are float32
  corpus_bytes: int


SIZES = {
  "small": Size(2, 128, 4, 64, 16, jnp.float32, 2_000_000),
  "gpt2-small": Size(12, 768, 12, 512, 32, jnp.bfloat16, 40_000_000),
}


class Block(nnx.Module):
  """Pre-norm block: causal self-attention and a 4x MLP."""

  def __init__(self, size: Size, rngs: nnx.Rngs):
    d, dtype = size.width, size.dtype
    self.heads = size.heads
    self.norm1 = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
    self.up = nnx.Linear(d, 4 * d, dtype=dtype, rngs=rngs)
    self.down = nnx.Linear(4 * d, d, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
    q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v))
    attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x = x + self.proj(attended.reshape(b, t, d))
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class TransformerLM(nnx.Module):
  """A GPT-style decoder over bytes."""

  def __init__(self, size: Size, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, size.width, dtype=size.dtype, rngs=rngs)
    self.position = nnx.Embed(size.context, size.width, dtype=size.dtype, rngs=rngs)
    self.blocks = nnx.List([Block(size, rngs) for _ in range(size.layers)])
    self.norm = nnx.LayerNorm(size.width, dtype=size.dtype, rngs=rngs)
    self.head = nnx.Linear(size.width, VOCAB, dtype=size.dtype, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.position(jnp.arange(tokens.shape[1]))
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x)).astype(jnp.float32)


def corpus(size: Size) -> tuple[np.ndarray, np.ndarray]:
  """(train, held-out) bytes of the standard library's sources, in file order."""
  chunks, total = [], 0
  for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
    data = path.read_bytes()
    chunks.append(data)
    total += len(data)
    if total >= size.corpus_bytes:
      break
  text = np.frombuffer(b"".join(chunks)[: size.corpus_bytes], np.uint8)
  cut = int(0.95 * len(text))
  return text[:cut], text[cut:]


def windows(text: np.ndarray, starts: np.ndarray, context: int) -> np.ndarray:
  """(n, context + 1) int32 windows of ``text`` starting at ``starts``."""
  return np.stack([text[s : s + context + 1] for s in starts]).astype(np.int32)


class Method(NamedTuple):
  name: str
  tx: optax.GradientTransformation
  gen: bool = False
  refresh_every: int = 1
  horizon: bool = False  # the state's hyperparams hold "total_steps"


def warmup_cosine(peak: float, count: jax.Array, total: jax.Array) -> jax.Array:
  """2% linear warm-up to ``peak``, then cosine decay to 0 at ``total``.

  In jnp on a traced ``total``, so that one compiled step serves any run
  length (the planner times a warm-up, then trains without recompiling).
  """
  total = total.astype(jnp.float32)
  warm = jnp.maximum(1.0, jnp.floor(WARMUP * total))
  count = count.astype(jnp.float32)
  progress = jnp.clip((count - warm) / jnp.maximum(total - warm, 1.0), 0.0, 1.0)
  return jnp.where(
    count < warm, peak * count / warm, peak * 0.5 * (1 + jnp.cos(jnp.pi * progress))
  )


def methods() -> list[Method]:
  def adamw(lr: Any) -> optax.GradientTransformation:
    return optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=0.1)

  def cosine(peak: float) -> optax.GradientTransformation:
    def make(total_steps: jax.Array) -> optax.GradientTransformation:
      return adamw(lambda count: warmup_cosine(peak, count, total_steps))

    return optax.inject_hyperparams(make)(total_steps=1)

  horizon = optax.inject_hyperparams(gen_optax.gen, static_args=("refresh_every",))
  return [
    *(Method(f"AdamW cosine {peak:g}", cosine(peak), horizon=True) for peak in PEAKS),
    Method("GeN-AdamW", gen_optax.gen(adamw(1.0)), gen=True),
    Method(
      "GeN-AdamW, refresh every 8",
      gen_optax.gen(adamw(1.0), refresh_every=8),
      gen=True,
      refresh_every=8,
    ),
    Method(
      "GeN-AdamW horizon",
      horizon(inner=adamw(1.0), total_steps=1),
      gen=True,
      horizon=True,
    ),
    Method("prodigy", optax.contrib.prodigy(weight_decay=0.1)),
  ]


class Compiled(NamedTuple):
  steps: dict[bool, Callable]  # the compiled train step, by static refresh flag
  memory_mb: float | None  # arguments + outputs + temporaries of a refresh step


def make_steps(method: Method, size: Size) -> Compiled:
  """The train step compiled once, ahead of time, by static refresh flag.

  One compilation per flag serves the planner's warm-up and the run (the run
  length is in the optimizer states, not in the code); its memory analysis
  is the step's compiled memory.
  """
  tx = method.tx
  graphdef, params, state = fresh(method, size, 1)
  tokens = jnp.zeros((size.batch, size.context + 1), jnp.int32)

  def loss_of(params, tokens):
    model = nnx.merge(graphdef, params)
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  def build(refresh: bool) -> Callable:
    def step(params, state, tokens):
      if method.gen:
        (value, grads), line = gen_optax.value_and_grad(loss_of, refresh=refresh)(
          params, state, tokens
        )
        updates, state = tx.update(grads, state, params, line=line, refresh=refresh)
        rate = gen_optax.learning_rate(state)
      else:
        value, grads = jax.value_and_grad(loss_of)(params, tokens)
        updates, state = tx.update(grads, state, params)
        rate = jnp.asarray(jnp.nan)
      return optax.apply_updates(params, updates), state, value, rate

    jitted = jax.jit(step, donate_argnums=(0, 1))
    return jitted.lower(params, state, tokens).compile()

  flags = (True, False) if method.refresh_every > 1 else (True,)
  steps = {flag: build(flag) for flag in flags}
  memory = steps[True].memory_analysis()
  memory_mb = None
  if memory is not None:
    memory_mb = (
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      + memory.temp_size_in_bytes
    ) / 2**20
  return Compiled(steps, memory_mb)


def fresh(method: Method, size: Size, steps: int) -> tuple[Any, Any, Any]:
  """(graphdef, params, state): the same initialisation for every method."""
  graphdef, params = nnx.split(TransformerLM(size, nnx.Rngs(0)))
  # A fresh buffer per leaf: some optimizers' states share one (prodigy's),
  # and a shared buffer cannot be donated twice.
  state = jax.tree.map(jnp.copy, method.tx.init(params))
  if method.horizon:
    state.hyperparams["total_steps"] = jnp.asarray(steps, jnp.int32)
  return graphdef, params, state


def evaluator(size: Size) -> Callable[[Any, np.ndarray], float]:
  """Mean loss over a stack of batches, one jitted forward shared by every method.

  Defined once so that it compiles once (every method has the same model);
  the planner's warm-up pays that compilation, not the run.  The model's
  structure comes from an abstract model (no parameters are initialised).
  """
  graphdef = nnx.split(nnx.eval_shape(lambda: TransformerLM(size, nnx.Rngs(0))))[0]

  @jax.jit
  def loss(params, tokens):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  return lambda params, batches: float(np.mean([loss(params, b) for b in batches]))


def run_method(
  method: Method,
  size: Size,
  steps: int,
  batches: np.ndarray,
  compiled: Compiled,
  evaluate: Callable[[Any, np.ndarray], float],
  evals: dict[str, np.ndarray],
) -> dict[str, Any]:
  """Trains one method from the shared initialisation for ``steps`` steps.

  ``overhead_seconds`` is the time outside the steps (initialisation and
  evaluation), which the planner's warm-up measures for the run.
  """
  begin = time.perf_counter()
  _, params, state = fresh(method, size, steps)
  losses, rates, seconds = [], [], []
  for t in range(steps):
    refresh = t % method.refresh_every == 0
    start = time.perf_counter()
    params, state, value, rate = compiled.steps[refresh](params, state, batches[t])
    value = float(value)  # waits for the step
    seconds.append(time.perf_counter() - start)
    losses.append(value)
    rates.append(float(rate))
  # The first call of each compiled variant is left out (one-time setup).
  timed = seconds[len(compiled.steps) :] or seconds
  result = {
    "method": method.name,
    "steps": steps,
    "step_seconds": float(np.median(timed)),
    "step_seconds_spread": [float(np.min(timed)), float(np.max(timed))],
    "first_step_seconds": seconds[0],
    "memory_mb": compiled.memory_mb,
    "losses": losses,
    "rates": rates,
  }
  result.update({name: evaluate(params, b) for name, b in evals.items()})
  result["overhead_seconds"] = time.perf_counter() - begin - sum(seconds)
  return result


def plan(
  budget: float, spent: float, warmups: list[dict[str, Any]], cap: int
) -> tuple[int, float]:
  """Steps for every method such that the run ends within ``budget`` seconds.

  Every step and the evaluation are compiled before or in the warm-up, and
  the runs reuse them (the run length is in the optimizer states, not in
  the compiled code): each method then costs its warm-up's
  ``overhead_seconds`` (initialisation and evaluation) and
  ``steps * step_seconds``; 10% of what is left is kept for the figure and
  for noise in the step times.
  """
  per_step = sum(w["step_seconds"] for w in warmups)
  left = 0.9 * (budget - spent - sum(w["overhead_seconds"] for w in warmups))
  steps = int(max(0, min(cap, left / per_step)))
  return steps, steps * per_step


def figure(results: list[dict[str, Any]], path: Path) -> None:
  fig, (ax_loss, ax_rate) = plt.subplots(1, 2, figsize=(13, 5))
  for r in results:
    losses = np.asarray(r["losses"])
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax_loss.plot(smooth, label=f"{r['method']} (held-out {r['held_out_loss']:.3f})")
    if not np.all(np.isnan(r["rates"])):
      ax_rate.semilogy(r["rates"], label=r["method"])
  ax_loss.set(xlabel="step", ylabel="training loss (moving mean), nats/byte")
  ax_loss.legend(fontsize=8)
  ax_rate.set(xlabel="step", ylabel="GeN's α")
  ax_rate.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


class CompileCounter:
  """Counts XLA compilations (jax.monitoring events) from its creation on."""

  def __init__(self) -> None:
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **kwargs: Any) -> None:
    del duration, kwargs
    self.count += event == "/jax/core/compile/backend_compile_duration"


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=SIZES, default="small")
  parser.add_argument("--steps", type=int, default=None, help="fixed step count")
  parser.add_argument("--budget-seconds", type=float, default=None)
  parser.add_argument("--max-steps", type=int, default=5000)
  parser.add_argument("--batch", type=int, default=None, help="default: the size's")
  parser.add_argument("--out", type=Path, default=Path("outputs/gpu-lm.json"))
  args = parser.parse_args(argv)
  if (args.steps is None) == (args.budget_seconds is None):
    parser.error("give exactly one of --steps and --budget-seconds")
  begin = time.perf_counter()
  compiles = CompileCounter()
  size = SIZES[args.size]
  if args.batch is not None:
    size = size._replace(batch=args.batch)
  train_text, held_out_text = corpus(size)
  rng = np.random.default_rng(0)
  evals = {
    "train_loss": windows(
      train_text,
      rng.integers(0, len(train_text) - size.context - 1, 8 * size.batch),
      size.context,
    ).reshape(8, size.batch, -1),
    "held_out_loss": windows(
      held_out_text,
      rng.integers(0, len(held_out_text) - size.context - 1, 8 * size.batch),
      size.context,
    ).reshape(8, size.batch, -1),
  }

  def batches(steps: int) -> np.ndarray:
    starts = np.random.default_rng(1).integers(
      0, len(train_text) - size.context - 1, (steps, size.batch)
    )
    return np.stack([windows(train_text, s, size.context) for s in starts])

  table = methods()
  compiled = {m.name: make_steps(m, size) for m in table}
  evaluate = evaluator(size)
  planned = None
  if args.budget_seconds is not None:
    probe = batches(2 + 8)  # two compilations, then timed steps
    warmups = [
      run_method(m, size, 10, probe, compiled[m.name], evaluate, evals) for m in table
    ]
    steps, planned = plan(
      args.budget_seconds, time.perf_counter() - begin, warmups, args.max_steps
    )
    if steps < 1:
      parser.exit(
        1,
        f"--budget-seconds {args.budget_seconds:g}: compiling and the warm-up took"
        f" {time.perf_counter() - begin:.0f} s, which leaves no time to train;"
        " give a larger budget.\n",
      )
    print(f"planned {steps} steps per method ({planned:.0f}s)", flush=True)
  else:
    steps = args.steps
  compiles_at_plan = compiles.count
  data = batches(steps)
  results = []
  for method in table:
    r = run_method(method, size, steps, data, compiled[method.name], evaluate, evals)
    results.append(r)
    print(
      f"{method.name:28s} train {r['train_loss']:.4f} held-out {r['held_out_loss']:.4f}"
      f"  {1e3 * r['step_seconds']:.1f} ms/step  memory {r['memory_mb']:.1f} MB",
      flush=True,
    )
  reference = next(r for r in results if r["method"].startswith("AdamW"))
  for r in results:
    r["step_ratio"] = r["step_seconds"] / reference["step_seconds"]
  device = jax.devices()[0]
  record = {
    "command": "python -m benchmarks.gpu_lm " + " ".join(argv or sys.argv[1:]),
    "device": f"{device.platform} ({device.device_kind}), {jax.device_count()} devices",
    "jax": jax.__version__,
    "optax": optax.__version__,
    "size": args.size,
    "model": size._replace(dtype=jnp.dtype(size.dtype).name)._asdict(),
    "corpus_bytes": [len(train_text), len(held_out_text)],
    "steps_per_method": steps,
    "budget_seconds": args.budget_seconds,
    "planned_seconds": planned,
    "total_seconds": time.perf_counter() - begin,
    # With a budget, the warm-up compiled everything the run uses: a
    # compilation after the plan is time the plan did not count.
    "compilations_after_plan": compiles.count - compiles_at_plan,
    "results": results,
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(record, indent=1))
  figure(results, args.out.with_suffix(".png"))
  return record


if __name__ == "__main__":
  main()
