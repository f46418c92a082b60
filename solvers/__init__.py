"""Generic batched fixed-point solvers with implicit differentiation.

Knows nothing about sequences or models: any f mapping a tensor to a tensor of the same shape works.

    cfg = SolverConfig(method="broyden", max_iter=30, tol=1e-4)
    z, stats = solve(f, z0, cfg, batch_dims=1)                 # no autograd
    z, stats = fixed_point(f, z0, cfg, grad="implicit")        # differentiable through z*
"""

from .config import SolverConfig
from .grad import GradMode, fixed_point
from .jacobian import jacobian_penalty, spectral_radius
from .solve import solve
from .stats import SolverStats

__all__ = ["GradMode", "SolverConfig", "SolverStats", "fixed_point", "jacobian_penalty", "solve",
           "spectral_radius"]
