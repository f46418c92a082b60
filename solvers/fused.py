"""Fused solves: each iteration's bookkeeping and method update as one branch-free function of tensors, compiled
once per shape with torch.compile, so that an iteration costs f, one compiled call and one host read.

It runs the algorithm of `solve` (the Monitor and the built-in methods): per-system stopping with the claim
test, freezing, best iterate, non-finite and divergence failures, Anderson's ridge-regularised mixing, Broyden's
restart and ring updates. Results agree with `solve` to rounding, and the iteration counts are the same
(tests/solvers/test_fused.py). What differs is how it runs:
- every full-size select runs (the eager loop skips uniform ones; fused, they cost nothing extra);
- Anderson's small system is solved by Gauss-Jordan elimination in float64 inside the graph, not by LU;
- Broyden's restart zeroes its buffers, so products run over all slots instead of the filled ones.

Opt in with SolverConfig(fused=True). It pays where dispatch dominates: small systems, such as generation's
one position per sequence (`stream(..., fused=True)` uses it for every token after the prompt). At training
sizes memory traffic dominates and the eager loop is as fast, without the compile time (seconds per shape).
Each shape, dtype and config compiles once; where torch.compile cannot run (no C++ compiler, no Triton), the
same functions run eagerly, with one warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from .monitor import settled_prefix
from .stats import SolverStats, residual_norms

# Whether fused solves are compiled; tests switch it off to check the functions themselves quickly.
COMPILE = True
# Inductor's per-call checks of every input's size and stride cost about 10% of a decode step at generation
# sizes. They are redundant here: the cache key holds the shapes and strides of a PureF's arguments, the carry
# comes from the graphs themselves, and fused_solve makes x0 and f's outputs contiguous.
INDUCTOR_OPTIONS: dict = {"size_asserts": False}


@dataclass(frozen=True)
class Spec:
    """Everything static about a fused solve: the compiled graphs specialise on it."""

    method: str
    memory: int
    damping: float
    ridge: float
    policy: str
    tol: float
    stop: str
    eps: float
    coupling: str
    system_shape: tuple[int, ...]
    size: int
    growth: float
    tiny: float
    trace: bool


def _observe(spec: Spec, x: Tensor, fx: Tensor, mon: dict[str, Tensor] | None
             ) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
    """Monitor.observe without its fast paths: (x reset where it failed, g zeroed where frozen, the new monitor
    state, the trace row). mon=None is the first observation (at z0, not a step)."""
    g = fx - x
    gnorm = torch.linalg.vector_norm(g, dim=1)
    fnorm = torch.linalg.vector_norm(fx, dim=1)
    abs_res, rel_res = residual_norms(gnorm, fnorm, spec.size, spec.eps)
    res = rel_res if spec.stop == "rel" else abs_res
    finite = (rel_res - rel_res) + (abs_res - abs_res) == 0
    xnorm = torch.linalg.vector_norm(x, dim=1)
    if mon is None:
        first = (gnorm, fnorm, torch.maximum(xnorm, fnorm).clamp_min(spec.tiny))
        if spec.coupling != "independent":
            first = tuple(v.amax().expand_as(v) for v in first)
        inf = torch.full_like(gnorm, math.inf)
        active = torch.ones_like(finite)
        mon = {"best_x": x, "best_res": inf, "best_abs": inf, "best_rel": inf, "active": active,
               "converged": ~active, "nonfinite": ~active, "diverged": ~active,
               "nstep": torch.zeros_like(gnorm, dtype=torch.long),
               "g_half": 0.5 * first[0], "f_twice": 2 * first[1], "limit": spec.growth * first[2]}
    else:
        mon = dict(mon, nstep=mon["nstep"] + mon["active"])
    active = mon["active"]
    diverging = finite & (xnorm > mon["limit"])
    accepted = finite & ~diverging
    live = active & accepted
    better = live & (res < mon["best_res"]) if spec.coupling == "independent" else live
    reached = res < spec.tol
    if spec.stop == "rel":
        reached = reached & ((gnorm < mon["g_half"]) | (fnorm <= mon["f_twice"]))
    converged = mon["converged"] | (live & reached)
    nonfinite = mon["nonfinite"] | (active & ~finite)
    diverged = mon["diverged"] | (active & diverging)
    if spec.coupling != "independent":
        converged = converged & settled_prefix(converged | nonfinite | diverged, spec.system_shape, spec.coupling)
    best_res = torch.where(better, res, mon["best_res"])
    best_x = torch.where(better[:, None], x, mon["best_x"])
    new_active = live & ~converged
    mon = dict(mon, best_x=best_x, best_res=best_res, best_abs=torch.where(better, abs_res, mon["best_abs"]),
               best_rel=torch.where(better, rel_res, mon["best_rel"]), active=new_active, converged=converged,
               nonfinite=nonfinite, diverged=diverged, better=better)
    x = torch.where(accepted[:, None], x, best_x)
    g = torch.where(new_active[:, None], g, torch.zeros((), dtype=g.dtype, device=g.device))
    return x, g, mon, torch.where(accepted, res, best_res)


def _solve_small(a: Tensor, b: Tensor) -> Tensor:
    """Solve a y = b for (S, m, m) a and (S, m, k) b by Gauss-Jordan elimination without pivoting (a is
    symmetric positive definite here: a Gram matrix plus a ridge), unrolled over m for the compiler."""
    aug = torch.cat([a, b], dim=2)
    m = a.shape[1]
    for k in range(m):
        pivot = aug[:, k : k + 1] / aug[:, k : k + 1, k : k + 1]
        eliminated = aug - aug[:, :, k : k + 1] * pivot
        aug = torch.cat([eliminated[:, :k], pivot, eliminated[:, k + 1 :]], dim=1)
    return aug[:, :, m:]


def _anderson_direction(spec: Spec, g: Tensor, state: dict[str, Tensor]) -> Tensor:
    """Anderson.direction, branch-free: with an empty history (count 0) gamma is 0 and the step is beta g."""
    step = g if spec.damping == 1.0 else spec.damping * g
    dG, gram = state["dG"], state["gram"]
    rhs = (dG * g[:, None]).sum(dim=2, keepdim=True).double()  # (S, m, 1); products as sums fuse into the graph
    filled = state["count"].clamp(1, spec.memory).double()
    lam = gram.diagonal(dim1=1, dim2=2).sum(dim=1) * (spec.ridge / filled) + torch.finfo(torch.float64).tiny
    eye = torch.eye(spec.memory, dtype=torch.float64, device=g.device)
    gamma = _solve_small(torch.addcmul(gram, lam[:, None, None], eye), rhs)
    gamma = torch.nan_to_num(gamma, nan=0.0, posinf=0.0, neginf=0.0).to(g.dtype).mT
    return step - (gamma.mT * state["dM"]).sum(dim=1)


def _anderson_record(spec: Spec, dx: Tensor, dg: Tensor, g_new: Tensor, state: dict[str, Tensor]
                     ) -> dict[str, Tensor]:
    """Anderson.record: the newest differences into slot count % memory, one Gram row and column."""
    count = state["count"]
    slot = torch.arange(spec.memory, device=dx.device) == count % spec.memory  # (m,)
    dM = torch.where(slot[None, :, None], (dx + spec.damping * dg)[:, None], state["dM"])
    dG = torch.where(slot[None, :, None], dg[:, None], state["dG"])
    row = (dG * dg[:, None]).sum(dim=2).double()  # (S, m)
    gram = torch.where(slot[None, :, None], row[:, None, :], state["gram"])
    gram = torch.where(slot[None, None, :], row[:, :, None], gram)
    return {"dM": dM, "dG": dG, "gram": gram, "count": count + 1}


def _broyden_apply(y: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """-y + sum_i left_i (right_i . y) over every slot (unfilled slots are zero)."""
    coeff = (right * y[:, None]).sum(dim=2, keepdim=True)  # (S, m, 1)
    return (coeff * left).sum(dim=1) - y


def _broyden_record(spec: Spec, dx: Tensor, dg: Tensor, g_new: Tensor, state: dict[str, Tensor]
                    ) -> dict[str, Tensor]:
    """Broyden.record with full steps; a restart (policy "restart", buffers full) zeroes the buffers."""
    U, V, count = state["U"], state["V"], state["count"]
    Bg_new = _broyden_apply(g_new, U, V)
    vt = _broyden_apply(dx, V, U)
    denom = torch.linalg.vecdot(vt, dg).unsqueeze(1)
    size = torch.linalg.vector_norm(vt, dim=1, keepdim=True) * torch.linalg.vector_norm(dg, dim=1, keepdim=True)
    scale = torch.where(denom.abs() > torch.finfo(dx.dtype).eps * size, 1.0 / denom, 0.0)
    vg = torch.linalg.vecdot(vt, g_new).unsqueeze(1)
    u = Bg_new * -scale
    step = Bg_new * (scale * vg - 1.0)
    slot = torch.arange(spec.memory, device=dx.device) == count % spec.memory
    if spec.policy == "ring":
        old = (U * slot[None, :, None]).sum(dim=1), (V * slot[None, :, None]).sum(dim=1)
        overwritten = torch.addcmul(step, old[0], torch.linalg.vecdot(old[1], g_new).unsqueeze(1))
        step = torch.where(count >= spec.memory, overwritten, step)
    U = torch.where(slot[None, :, None], u[:, None], U)
    V = torch.where(slot[None, :, None], vt[:, None], V)
    count = count + 1
    if spec.policy == "restart":
        restart = state["count"] == spec.memory
        U, V = torch.where(restart, torch.zeros_like(U), U), torch.where(restart, torch.zeros_like(V), V)
        step, count = torch.where(restart, g_new, step), torch.where(restart, torch.zeros_like(count), count)
    return {"U": U, "V": V, "count": count, "step": step}


def _direction(spec: Spec, g: Tensor, state: dict[str, Tensor]) -> Tensor:
    if spec.method == "anderson":
        return _anderson_direction(spec, g, state)
    if spec.method == "broyden":
        return state["step"]
    return g if spec.damping == 1.0 else spec.damping * g


def _record(spec: Spec, dx: Tensor, dg: Tensor, g_new: Tensor, state: dict[str, Tensor]) -> dict[str, Tensor]:
    if spec.method == "anderson":
        return _anderson_record(spec, dx, dg, g_new, state)
    if spec.method == "broyden":
        return _broyden_record(spec, dx, dg, g_new, state)
    return state


def _method_state(spec: Spec, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    """The method's empty memory for iterate x and first residual g."""
    systems, size = x.shape
    count = torch.zeros((), dtype=torch.long, device=x.device)
    if spec.method == "anderson":
        return {"dM": x.new_zeros(systems, spec.memory, size), "dG": x.new_zeros(systems, spec.memory, size),
                "gram": torch.zeros(systems, spec.memory, spec.memory, dtype=torch.float64, device=x.device),
                "count": count}
    if spec.method == "broyden":
        return {"U": x.new_zeros(systems, spec.memory, size), "V": x.new_zeros(systems, spec.memory, size),
                "count": count, "step": g}
    return {}


Carry = tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]  # g, dx, monitor, method


def _start(spec: Spec, x0: Tensor, fx0: Tensor) -> tuple[Tensor, Carry, Tensor, Tensor]:
    """The first observation and step: (x1, carry, systems still active, trace row)."""
    x, g, mon, trace = _observe(spec, x0, fx0, None)
    state = _method_state(spec, x, g)
    dx = _direction(spec, g, state)
    return x + dx, (g, dx, mon, state), mon["active"].sum(), trace


def _advance(spec: Spec, x: Tensor, fx: Tensor, carry: Carry) -> tuple[Tensor, Carry, Tensor, Tensor]:
    """Observe f(x) at the step just taken, record it and take the next: (x_next, carry, active count, trace)."""
    g, dx, mon, state = carry
    x, g_new, mon, trace = _observe(spec, x, fx, mon)
    state = _record(spec, dx, g_new - g, g_new, state)
    dx = _direction(spec, g_new, state)
    return x + dx, (g_new, dx, mon, state), mon["active"].sum(), trace


@dataclass(frozen=True, eq=False)
class PureF:
    """f given as a pure function of the iterate and explicit tensors, f(z) = fn(z, *args), so that a fused
    solve can trace it into its graphs: then f runs inside the one compiled call per iteration too.

    fn must read nothing but its arguments (weights, caches and masks are among args), write nothing, and keep
    one function object across solves (the compiled graphs are cached per fn and per the args' shapes)."""

    fn: Callable[..., Tensor]
    args: tuple[Tensor, ...]
    # fn returns (f(z), *aux) with this many auxiliary tensors (first dim: the systems); a fused solve returns,
    # in stats.aux, each one as it was at each system's returned iterate (e.g. a cell's keys of z*).
    aux: int = 0


@dataclass(frozen=True)
class _PureKey:
    """What the graphs of a PureF specialise on: its function, its arguments' layout, z's shape and dtype."""

    fn: Callable[..., Tensor]
    args: tuple[tuple[torch.Size, tuple[int, ...], torch.dtype, torch.device], ...]
    z_shape: torch.Size
    z_dtype: torch.dtype
    aux: int


class Graphs:
    """The start and advance functions of one Spec and one iterate shape, on flat tuples of tensors:
    start(x0, fx0) and advance(x, fx, *carry) both return (x_next, active count, trace row, *carry). With a
    PureF they evaluate f themselves, start(x0, *args) and advance(x, *carry, *best_aux, *args), and both also
    return the PureF's auxiliary outputs at each system's best iterate (best_aux) after the carry.

    Compiled by tracing them to an ATen graph (make_fx) and compiling that with Inductor: no Dynamo frame,
    guards or recompiles per call (they cost 25 us a call on CPU, as much as the graph's work at generation
    sizes); the cache key (Spec, shapes, dtypes, device, and a PureF's function) plays the guards' part. Where
    compiling fails, the same functions run eagerly, with one warning.
    """

    def __init__(self, spec: Spec, x0: Tensor, pure: _PureKey | None = None,
                 pure_args: Sequence[Tensor] = ()) -> None:
        fx0 = x0.clone()  # distinct from x0: tracing one tensor passed twice would tie the two inputs together
        example = _start(spec, x0, fx0)[1]
        self.layout = pytree.tree_structure(example)
        n_leaves = self.layout.num_leaves

        n_aux = pure.aux if pure is not None else 0

        def f_of(x: Tensor, args: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
            out = pure.fn(x.view(pure.z_shape).to(pure.z_dtype), *args)
            fx, aux = (out[0], list(out[1:])) if n_aux else (out, [])
            return fx.reshape(x.shape).to(x.dtype), aux

        def keep_best(carry: Carry, aux: Sequence[Tensor], best: Sequence[Tensor]) -> list[Tensor]:
            better = carry[2]["better"]
            return [torch.where(better.view(-1, *[1] * (a.dim() - 1)), a, b) for a, b in zip(aux, best, strict=True)]

        def start(x0: Tensor, *more: Tensor) -> tuple[Tensor, ...]:
            fx0, aux = f_of(x0, more) if pure is not None else (more[0], [])
            x, carry, active, row = _start(spec, x0, fx0)
            return (x, active, row, *pytree.tree_leaves(carry), *aux)

        def advance(x: Tensor, *more: Tensor) -> tuple[Tensor, ...]:
            if pure is not None:
                leaves, best, args = more[:n_leaves], more[n_leaves : n_leaves + n_aux], more[n_leaves + n_aux :]
                fx, aux = f_of(x, args)
            else:
                fx, leaves, best, aux = more[0], more[1:], (), []
            x, carry, active, row = _advance(spec, x, fx, pytree.tree_unflatten(list(leaves), self.layout))
            return (x, active, row, *pytree.tree_leaves(carry), *keep_best(carry, aux, best))

        self.start, self.advance, self.compiled = start, advance, False
        if not COMPILE:
            return
        try:
            from torch import _inductor  # here, not at import time: Inductor takes a second or more to import
            from torch.fx.experimental.proxy_tensor import make_fx

            leaves = [t.clone() for t in pytree.tree_leaves(example)]  # distinct tensors, for the same reason
            start_in = [x0, *pure_args] if pure is not None else [x0, fx0]
            if n_aux:  # examples of the auxiliary outputs, from one eager evaluation
                leaves += [a.clone() for a in f_of(x0, pure_args)[1]]
            advance_in = [x0, *leaves, *pure_args] if pure is not None else [x0, fx0, *leaves]
            with _inductor.config.patch(INDUCTOR_OPTIONS):
                self.start = _inductor.compile(make_fx(start)(*start_in), start_in)
                self.advance = _inductor.compile(make_fx(advance)(*advance_in), advance_in)
            self.compiled = True
        except Exception as err:  # noqa: BLE001  any compiler failure: the eager functions compute the same
            warnings.warn(f"solvers.fused: compiling failed ({type(err).__name__}: {str(err)[:200]}); running the "
                          "fused iterations eagerly", RuntimeWarning, stacklevel=3)

    def carry(self, leaves: Sequence[Tensor]) -> Carry:
        """The carry of flat leaves."""
        return pytree.tree_unflatten(list(leaves), self.layout)


_CACHE: dict[tuple, Graphs] = {}
_CACHE_SIZE = 64


def graphs_for(spec: Spec, x0: Tensor, pure: PureF | None = None, z_shape: torch.Size | None = None,
               z_dtype: torch.dtype | None = None) -> Graphs:
    """The (cached) graphs of spec for iterates shaped like x0 (and for pure's f, with z shaped z_shape)."""
    key_pure = None
    if pure is not None:
        layout = tuple((a.shape, a.stride(), a.dtype, a.device) for a in pure.args)
        key_pure = _PureKey(pure.fn, layout, z_shape, z_dtype, pure.aux)
    key = (spec, x0.shape, x0.dtype, x0.device, COMPILE, key_pure)
    graphs = _CACHE.get(key)
    if graphs is None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))  # the oldest
        example = torch.zeros(x0.shape, dtype=x0.dtype, device=x0.device)
        graphs = _CACHE[key] = Graphs(spec, example, key_pure, pure.args if pure is not None else ())
    return graphs


def spec_of(cfg, x: Tensor, system_shape: torch.Size, coupling: str) -> Spec:
    """The static description of a fused solve of iterate x (S, N) under SolverConfig cfg."""
    eps = torch.finfo(x.dtype).eps
    return Spec(method=cfg.method, memory=cfg.window, damping=float(cfg.damping),
                ridge=float(cfg.ridge) if cfg.ridge is not None else 1e3 * eps, policy=cfg.memory_policy,
                tol=float(cfg.tol), stop=cfg.stop, eps=float(cfg.eps), coupling=coupling,
                system_shape=tuple(system_shape), size=x.shape[1], growth=eps ** -0.5,
                tiny=torch.finfo(x.dtype).tiny, trace=cfg.trace)


def fused_solve(f: Callable[[Tensor], Tensor], x0: Tensor, cfg, system_shape: torch.Size, coupling: str,
                pure: PureF | None = None, z_shape: torch.Size | None = None,
                z_dtype: torch.dtype | None = None) -> tuple[Tensor, SolverStats]:
    """Solve x = f(x) for x0 laid out as (S, N) with the fused iterations; the best (independent) or last
    (coupled) finite iterate, as (S, N), and its stats shaped by system_shape. With `pure` (the same f as a
    PureF of z shaped z_shape, dtype z_dtype) f is evaluated inside the graphs instead of by calling f."""
    x0 = x0.contiguous()  # the compiled graphs assume the layouts they were traced with (see INDUCTOR_OPTIONS)
    graphs = graphs_for(spec_of(cfg, x0, system_shape, coupling), x0, pure, z_shape, z_dtype)
    args = pure.args if pure is not None else ()
    x, active, row, *leaves = graphs.start(x0, *args) if pure is not None else graphs.start(x0, f(x0).contiguous())
    nfe, trace = 1, [row] if cfg.trace else None
    for _ in range(cfg.max_iter):
        if not active.item():
            break
        if pure is not None:
            x, active, row, *leaves = graphs.advance(x, *leaves, *args)
        else:
            x, active, row, *leaves = graphs.advance(x, f(x).contiguous(), *leaves)
        nfe += 1
        if trace is not None:
            trace.append(row)
    n_aux = pure.aux if pure is not None else 0
    aux = tuple(leaves[len(leaves) - n_aux :]) if n_aux else None
    mon = graphs.carry(leaves[: len(leaves) - n_aux])[2]
    stats = SolverStats(
        method=cfg.method, nfe=nfe, nstep=mon["nstep"].reshape(system_shape),
        abs_residual=mon["best_abs"].reshape(system_shape), rel_residual=mon["best_rel"].reshape(system_shape),
        converged=mon["converged"].reshape(system_shape), nonfinite=mon["nonfinite"].reshape(system_shape),
        diverged=mon["diverged"].reshape(system_shape),
        trace=torch.stack(trace).reshape(-1, *system_shape) if trace is not None else None, aux=aux,
    )
    return mon["best_x"], stats
