"""The GIA-O objective in functional form: compiled (``attack.compile``) and batched over
restarts (``attack.batch_restarts``).

A model used with ``create_graph=True`` cannot be compiled (aot_autograd has no double
backward), but the functional objective can: ``torch.func.grad`` of the gradient-matching loss
with respect to the images, where the parameter gradient is itself a ``torch.func.grad`` through
``functional_call``. The same function, ``vmap``-ed over a leading restart axis, runs all
restarts of an attack as one problem (restart r's gradient depends on restart r alone).

Compiled functions are cached by everything that shapes the graph (architecture, tensor shapes,
device, the attack's prior weights): restarts and sweep runs with the same shapes reuse them; the
weights, target and labels are arguments. Not every setting has a functional form (WST replay,
the BN prior's hooks, the adaptive transform, groups, learned labels, L-BFGS): those keep the
autograd path, with a one-line warning if compile or batching was asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, grad_and_value, vmap

from gradleak.attacks import race
from gradleak.attacks.losses import PLAIN_DISTANCES
from gradleak.attacks.restart import Candidate, Restart, RunContext
from gradleak.attacks.steps import AdamStep, Gradient

_CACHE: dict[tuple, Callable] = {}


@dataclass
class Plan:
    """How an attack's restarts run: ``batched`` (one vmapped problem) or one after another,
    with ``gradient`` (the functional objective) or None (autograd); ``path`` says which."""

    batched: bool
    gradient: Gradient | None
    path: str


def unsupported(ctx: RunContext) -> str | None:
    """Why this run has no functional objective (None: it has one)."""
    model, s = ctx.setup.model, ctx.settings
    reasons = [(ctx.setup.simulate, "the WST replay of local SGD"),
               (ctx.bn_prior is not None, "the BN-statistics prior"),
               (ctx.hooks.transform is not None, "the adaptive transform"),
               (getattr(ctx.hooks, "encodes_inputs", False), "an input encoding (mix-decode)"),
               (s.group > 1, "group consistency"), (s.learn_labels, "learned labels"),
               (s.optimizer != "adam", f"optimizer={s.optimizer}"),
               (s.distance not in PLAIN_DISTANCES, f"distance={s.distance}"),
               (getattr(model, "modality", None) == "text", "a text model"),
               (any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
                    for m in model.modules()), "train-mode BatchNorm")]
    found = [why for bad, why in reasons if bad]
    return ", ".join(found) if found else None


def plan(ctx: RunContext) -> Plan:
    """The path for this run. ``batch_restarts=auto`` batches on CUDA only: on CPU the batched
    problem measured no faster than the sequential one (docs/benchmarks.md)."""
    s = ctx.settings
    mode = s.batch_restarts
    batch = s.restarts > 1 and (mode == "on" or (mode == "auto" and ctx.setup.device.type == "cuda"))
    if batch and (s.stop or s.max_seconds is not None):
        if mode == "on":
            warnings.warn("attack.batch_restarts=on: restarts run one after another with "
                          "attack.stop / attack.max_seconds (each restart stops on its own)", stacklevel=3)
        batch = False
    if not (s.compile or batch):
        return Plan(False, None, "sequential, autograd")
    why = unsupported(ctx)
    if why is not None:
        warnings.warn(f"attack.compile / batch_restarts: no functional objective with {why}; "
                      "using the autograd path", stacklevel=3)
        return Plan(False, None, "sequential, autograd")
    fn = objective_gradient(ctx, batched=batch, compiled=s.compile)
    path = f"{'batched' if batch else 'sequential'}, {'compiled' if s.compile else 'functional'}"
    return Plan(batch, fn, path)


def _total_and_match(ctx: RunContext, chosen_names: list[str]):
    model, hooks = ctx.setup.model, ctx.hooks
    distance, scale = PLAIN_DISTANCES[ctx.settings.distance], ctx.settings.distance_scale

    def total_and_match(variable, params, buffers, target, labels):
        images = hooks.images(variable)

        def loss_of(chosen):
            full = {**params, **dict(zip(chosen_names, chosen, strict=True))}
            return F.cross_entropy(functional_call(model, (full, buffers), (images,)), labels)

        dummy = grad(loss_of)(tuple(params[n] for n in chosen_names))
        match = distance(list(dummy), list(target), [1.0] * len(target))
        return scale * match + hooks.regularisers(images, None), match

    return total_and_match


def _key(ctx: RunContext, batched: bool, compiled: bool) -> tuple:
    model, setup, s = ctx.setup.model, ctx.setup, ctx.settings
    shapes = tuple((n, tuple(t.shape), t.dtype) for n, t in
                   [*model.named_parameters(), *model.named_buffers()])
    prior = (s.distance, s.distance_scale, s.tv, s.tv_border, s.l2, *ctx.hooks.images_key())
    return (type(ctx.hooks), repr(model), shapes, tuple(m.training for m in model.modules()),
            tuple(setup.chosen), ctx.obs.num_samples, ctx.obs.input_shape, str(setup.device),
            prior, batched, compiled, s.restarts if batched else 1)


def objective_gradient(ctx: RunContext, *, batched: bool, compiled: bool) -> Gradient:
    """``variable [N, ...]`` (or ``[R, N, ...]`` batched) -> (d total / d variable, match [] or
    [R]), the functional twin of the autograd objective of :class:`Restart` (priors TV and L2)."""
    model, setup = ctx.setup.model, ctx.setup
    key = _key(ctx, batched, compiled)
    if key not in _CACHE:
        chosen_names = [setup.all_names[i] for i in setup.chosen]
        fn = grad_and_value(_total_and_match(ctx, chosen_names), has_aux=True)
        if batched:
            fn = vmap(fn, in_dims=(0, None, None, None, None))
        _CACHE[key] = _Compiled(fn) if compiled else fn
    fn = _CACHE[key]
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    target, labels = tuple(setup.target), ctx.fixed_labels

    def gradient(variable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, (_total, match) = fn(variable.detach(), params, buffers, target, labels)
        return g, match

    return gradient


class _Compiled:
    """``torch.compile(fn)``, falling back to ``fn`` with a one-line warning if compiling fails."""

    def __init__(self, fn: Callable) -> None:
        self.eager, self.compiled = fn, torch.compile(fn, dynamic=False)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # any compiler failure: the eager function is equivalent
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                warnings.warn(f"attack.compile: torch.compile failed ({first}); running uncompiled",
                              stacklevel=2)
                self.compiled = None
        return self.eager(*args)


def _no_objective() -> tuple[torch.Tensor, torch.Tensor]:
    raise AssertionError("the batched path steps with its functional gradient only")


def batched_restarts(ctx: RunContext, generator: torch.Generator, bar,
                     plan: Plan) -> tuple[list[Candidate], list[int]]:
    """All restarts as one ``[R, N, ...]`` problem. Adam is element-wise, so one Adam over the
    stack is R independent ones; the starts are drawn in the sequential path's order. With
    ``attack.race`` the stack runs round by round and is narrowed to the survivors after each
    cut (their Adam moments and lr schedule carried over); the record goes to ``ctx.race``."""
    s, hooks = ctx.settings, ctx.hooks
    count = s.restarts
    draws = [hooks.initial(ctx.obs, ctx.setup.model, generator) for _ in range(count)]
    variable = torch.stack(draws).to(ctx.setup.device).requires_grad_(True)
    runs = [Restart.around(ctx, variable[r].detach()) for r in range(count)]
    active = list(range(count))  # the restarts in the stack, in stack order

    def seen(matches: torch.Tensor) -> None:
        for row, m in enumerate(matches.tolist()):
            run = runs[active[row]]
            run.lowest = min(run.lowest, m)
            if s.keep == "best" and m < run.best.loss:
                run.best.loss, run.best.free = m, [variable[row].detach().clone()]

    def adam(free: torch.Tensor) -> AdamStep:
        return AdamStep([free], _no_objective, seen, lr=s.lr, signed=s.signed, box=s.box,
                        schedule=hooks.lr_schedule, gradient=plan.gradient)

    step, done = adam(variable), 0
    for end in race.round_ends(s) if s.race else [s.iterations]:
        for it in range(done, end):
            matches = step(it).tolist()
            if hooks.on_iterate is not None:
                hooks.on_iterate(it, variable.detach())
            for row, m in enumerate(matches):
                run = runs[active[row]]
                run.used, run.last = it + 1, m
                if it % 10 == 0:
                    run.history.append(m)
            if it % 10 == 0:
                bar.set_postfix(grad_loss=f"{min(matches):.4f}")
            bar.update(len(active))
        done = end
        if end < s.iterations:
            survivors = race.kept(active, [runs[r].lowest for r in active], s.race_keep)
            if len(survivors) < len(active):
                for row, r in enumerate(active):  # the eliminated keep the iterate they reached
                    runs[r].free = [variable[row].detach().clone()]
                rows = [active.index(r) for r in survivors]
                variable, step = _narrowed(variable, step, rows, adam)
                active = survivors
    for row, r in enumerate(active):
        runs[r].free = [variable[row].detach()]
    found, owner = [], []
    for r, run in enumerate(runs):
        mine = run.candidates()
        found += mine
        owner += [r] * len(mine)
        ctx.history.extend(run.recorded())
    if s.race:
        ctx.race = race.RaceRecord(rounds=race.round_ends(s), survivors=active, restart_of=owner)
    return found, [run.used for run in runs]


def _narrowed(variable: torch.Tensor, step: AdamStep, rows: list[int],
              adam: Callable[[torch.Tensor], AdamStep]) -> tuple[torch.Tensor, AdamStep]:
    """The stack and its Adam restricted to ``rows``: the moments (and every other per-restart
    state) sliced, the step count, lr and schedule position carried over."""
    index = torch.tensor(rows, device=variable.device)
    narrow = variable.detach()[index].clone().requires_grad_(True)
    fresh = adam(narrow)
    state = step.opt.state[variable]
    fresh.opt.state[narrow] = {k: (v[index].clone() if torch.is_tensor(v) and v.ndim > 0 else
                                   v.clone() if torch.is_tensor(v) else v)
                               for k, v in state.items()}
    for new, old in zip(fresh.opt.param_groups, step.opt.param_groups, strict=True):
        new["lr"] = old["lr"]
    if step.scheduler is not None:
        fresh.scheduler.load_state_dict(step.scheduler.state_dict())
    return narrow, fresh
