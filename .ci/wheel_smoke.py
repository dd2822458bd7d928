"""Smoke test of an installed (not editable) gen_optax wheel.

Run from outside the checkout, in a fresh virtual environment holding only the
wheel (with its ``flax`` extra): a file missing from the wheel fails here.
Checks: the import comes from site-packages, ``py.typed`` ships, every public
name's doctests pass, and one jitted GeN step equals its closed form.
"""

import doctest
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gen_optax

package = Path(gen_optax.__file__).parent
assert "site-packages" in package.parts, f"not the installed wheel: {package}"
assert (package / "py.typed").is_file(), "py.typed is missing from the wheel"

# The public API's doctests (each public name's docstring, as Sphinx shows it).
flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
runner = doctest.DocTestRunner(optionflags=flags)
finder = doctest.DocTestFinder()
for name in gen_optax.__all__:
  for test in finder.find(getattr(gen_optax, name), name, globs={}):
    runner.run(test)
results = runner.summarize(verbose=False)
assert results.attempted > 0, "no doctests found"

# One jitted step of GeN-SGD on L(θ) = ½‖θ‖²: the first update has no
# previous step to measure along, so it is −init_learning_rate · g exactly.
tx = gen_optax.gen(optax.sgd(1.0), init_learning_rate=0.25)
theta = jnp.array([1.0, -2.0, 3.0])
loss = lambda p: 0.5 * jnp.sum(p**2)  # noqa: E731
step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p, value_fn=loss))
updates, state = step(theta, tx.init(theta))
np.testing.assert_allclose(updates, -0.25 * theta, rtol=1e-6)
assert int(state.count) == 1

print(
  f"gen_optax {gen_optax.__version__} from {package}: "
  f"{results.attempted} doctests passed, one jitted step as expected"
)
sys.exit(1 if results.failed else 0)
