"""gen_optax: the generalized-Newton (GeN) learning rate for any optax optimizer.

Bu & Xu, *Gradient descent with generalized Newton's method*, ICLR 2025,
https://arxiv.org/abs/2407.02772
"""

from gen_optax._src.curvature import LineDerivatives as LineDerivatives
from gen_optax._src.curvature import line_derivatives as line_derivatives
from gen_optax._src.gen import GeNInfo as GeNInfo
from gen_optax._src.gen import GeNState as GeNState
from gen_optax._src.gen import Status as Status
from gen_optax._src.gen import gen as gen
from gen_optax._src.probes import ProbeFit as ProbeFit
from gen_optax._src.probes import line_probes as line_probes
from gen_optax._src.probes import one_probe_curvature as one_probe_curvature

__version__ = "0.1.0"

__all__ = (
  "GeNInfo",
  "GeNState",
  "LineDerivatives",
  "Status",
  "gen",
  "line_derivatives",
)
