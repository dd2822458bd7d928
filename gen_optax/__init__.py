"""gen_optax: the generalized-Newton (GeN) learning rate for any optax optimizer.

Bu & Xu, *Gradient descent with generalized Newton's method*, ICLR 2025,
https://arxiv.org/abs/2407.02772
"""

from gen_optax._src.accumulation import MultiStepsState as MultiStepsState
from gen_optax._src.accumulation import multi_steps as multi_steps
from gen_optax._src.curvature import LineDerivatives as LineDerivatives
from gen_optax._src.curvature import line_derivatives as line_derivatives
from gen_optax._src.flax_utils import linen_apply_gradients as linen_apply_gradients
from gen_optax._src.flax_utils import nnx_value_fn as nnx_value_fn
from gen_optax._src.gen import GeNInfo as GeNInfo
from gen_optax._src.gen import GeNState as GeNState
from gen_optax._src.gen import Status as Status
from gen_optax._src.gen import gen as gen
from gen_optax._src.probes import ProbeFit as ProbeFit
from gen_optax._src.probes import line_probes as line_probes
from gen_optax._src.probes import one_probe_curvature as one_probe_curvature
from gen_optax._src.rule import RuleState as RuleState

__version__ = "0.1.0"

__all__ = (
  "GeNInfo",
  "GeNState",
  "LineDerivatives",
  "MultiStepsState",
  "ProbeFit",
  "RuleState",
  "Status",
  "gen",
  "line_derivatives",
  "line_probes",
  "linen_apply_gradients",
  "multi_steps",
  "nnx_value_fn",
  "one_probe_curvature",
)
