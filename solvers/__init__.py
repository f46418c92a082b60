"""Generic batched fixed-point solvers with implicit differentiation.

Knows nothing about sequences or models: any f mapping a tensor to a tensor of the same shape works.

    cfg = SolverConfig(method="broyden", max_iter=30, tol=1e-4)
    z, stats = solve(f, z0, cfg, batch_dims=1)                 # no autograd
    z, stats = fixed_point(f, z0, cfg, grad="implicit")        # differentiable through z*

New methods plug in with `register_method(name, build)`, where build(cfg, x) returns an object with
direction(g) and record(dx, dg, g_new) (the `Method` protocol, see solvers/registry.py).
"""

from . import anderson, broyden, picard  # noqa: F401  (importing them registers the built-in methods)
from .config import SolverConfig
from .fused import PureF
from .grad import GradMode, fixed_point
from .jacobian import jacobian_penalty, spectral_radius
from .registry import METHODS, Method, MethodEntry, register_method, unregister_method
from .solve import solve
from .stats import SolverStats

__all__ = ["METHODS", "GradMode", "Method", "MethodEntry", "PureF", "SolverConfig", "SolverStats", "fixed_point",
           "jacobian_penalty", "register_method", "solve", "spectral_radius", "unregister_method"]
