"""Every Python block of the how-to pages runs, page by page, as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"
# The how-to pages, the quickstart and the modes page (its static-flag loop):
# each page's blocks run as one script.
HOWTO = [*sorted(DOCS.glob("howto/*.md")), DOCS / "quickstart.md", DOCS / "modes.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_every_howto_page_has_code():
  assert {p.stem for p in HOWTO} >= {
    "nnx",
    "linen",
    "composition",
    "accumulation",
    "sharding",
    "multihost",
    "checkpointing",
    "quickstart",
    "modes",
  }
  for page in HOWTO:
    assert BLOCK.findall(page.read_text()), page


@pytest.mark.parametrize(
  "page",
  # The sharding page also runs on 8 devices in the slow tier (tests/multidevice).
  [
    pytest.param(p, marks=pytest.mark.slow) if p.stem == "sharding" else p
    for p in HOWTO
  ],
  ids=lambda p: p.stem,
)
def test_howto_code_runs(page):
  namespace: dict = {"__name__": f"howto_{page.stem}"}
  for block in BLOCK.findall(page.read_text()):
    exec(compile(block, str(page), "exec"), namespace)


def test_readme_usage_trains_and_equals_the_fused_form():
  # The README's usage block, on a least-squares problem that defines the
  # names it uses; the fused form its next sentence names must give the
  # same steps (two independent paths to one measurement).
  import jax
  import jax.numpy as jnp
  import optax

  import gen_optax

  readme = (DOCS.parent / "README.md").read_text()
  (usage,) = BLOCK.findall(readme)[:1]
  a = jax.random.normal(jax.random.key(0), (64, 8))
  batch = (a, a @ jnp.arange(1.0, 9.0))

  def loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] - y) ** 2)

  namespace = {"params": {"w": jnp.zeros(8)}, "loss": loss}
  exec(compile(usage, "README.md", "exec"), namespace)
  step, tx = namespace["step"], namespace["tx"]

  @jax.jit
  def fused_step(params, state, batch):
    (_, grads), line = gen_optax.value_and_grad(loss)(params, state, batch)
    updates, state = tx.update(grads, state, params, line=line)
    return optax.apply_updates(params, updates), state

  fused = unfused = (namespace["params"], namespace["state"])
  for _ in range(300):
    fused, unfused = fused_step(*fused, batch), step(*unfused, batch)
  # float32 sums in two compiled graphs: agreement to rounding.
  assert jnp.allclose(fused[0]["w"], unfused[0]["w"], rtol=1e-4, atol=1e-5)
  assert gen_optax.learning_rate(fused[1]) == pytest.approx(
    float(gen_optax.learning_rate(unfused[1])), rel=1e-4
  )
  # ... and it trains: from the mean square of y (about 200) far down.
  assert loss(fused[0], batch) < 1e-2 * loss(namespace["params"], batch)
