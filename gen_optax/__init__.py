"""gen_optax: the generalized-Newton (GeN) learning rate for any optax optimizer.

Bu & Xu, *Gradient descent with generalized Newton's method*, ICLR 2025,
https://arxiv.org/abs/2407.02772
"""

from gen_optax._src.accumulation import MultiStepsState as MultiStepsState
from gen_optax._src.accumulation import multi_steps as multi_steps
from gen_optax._src.flax_utils import linen_apply_gradients as linen_apply_gradients
from gen_optax._src.flax_utils import nnx_value_and_grad as nnx_value_and_grad
from gen_optax._src.flax_utils import nnx_value_fn as nnx_value_fn
from gen_optax._src.fused import value_and_grad as value_and_grad
from gen_optax._src.gen import gen as gen
from gen_optax._src.line import LineMeasurement as LineMeasurement
from gen_optax._src.line import Probes as Probes
from gen_optax._src.line import auto_mode as auto_mode
from gen_optax._src.line import measure_line as measure_line
from gen_optax._src.rule import RuleState as RuleState
from gen_optax._src.rule import Status as Status
from gen_optax._src.state import GeNInfo as GeNInfo
from gen_optax._src.state import GeNState as GeNState
from gen_optax._src.state import diagnostics as diagnostics
from gen_optax._src.state import find_state as find_state
from gen_optax._src.state import learning_rate as learning_rate

__version__ = "0.1.0"

__all__ = (
  "GeNInfo",
  "GeNState",
  "LineMeasurement",
  "MultiStepsState",
  "Probes",
  "RuleState",
  "Status",
  "auto_mode",
  "diagnostics",
  "find_state",
  "gen",
  "learning_rate",
  "linen_apply_gradients",
  "measure_line",
  "multi_steps",
  "nnx_value_and_grad",
  "nnx_value_fn",
  "value_and_grad",
)
