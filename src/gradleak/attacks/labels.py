"""Label inference from the last layer's gradient (the paper's GIA-A label attacks).

All rules read the update's *gradient direction*: a FedAvg model delta is -lr * (sum of
gradients), so it is negated first (see :meth:`SharedUpdate.gradient_direction`).

Notation: ``g_c`` is row ``c`` of the last linear layer's weight gradient ``[C, D]``, ``b_c`` its
bias gradient, ``K`` the number of samples, ``s_c = sum_j g_c,j``. For the mean cross-entropy over
K samples, ``dL/dW_c = (1/K) sum_k (p_kc - y_kc) a_k`` with ``a_k >= 0`` the last layer's input
(after a ReLU) and ``p_k`` the softmax output.

Scale of the direction: a FedSGD gradient is one mean-loss gradient; a FedAvg direction is
``lr * (sum over U local steps of mini-batch mean gradients)``. Rules that need the absolute scale
(``geng``, ``ilrg``) use ``lr * local_steps`` when ``lr`` is given (pass ``lr=1.0`` for a FedSGD
gradient) and otherwise estimate it from the gradient itself (scale-free, see each rule).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from gradleak.errors import GradleakError
from gradleak.registry import Registry

LABEL_RULES: Registry = Registry("label rule")

# Weighting the count row keeps sum(n) = K (near) exact in iLRG's least-squares solutions.
_SUM_WEIGHT = 10.0

DUMMY_SAMPLES = 64
"""Random images Geng's rule passes through the model to estimate p-bar and O-bar."""


@dataclass(frozen=True)
class LabelContext:
    """What a label rule may read.

    ``weight [C, D]`` / ``bias [C]`` (or None): the last linear layer's rows of the gradient
    direction; ``count``: K; ``model``: the global model (for rules that run dummy inputs);
    ``input_shape``: ``(C, H, W)`` of one sample; ``local_steps``: U (1 for FedSGD);
    ``lr``: step size per local step (1.0 for a FedSGD gradient, None when unknown);
    ``generator``: seeded randomness for dummy inputs.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    count: int
    model: nn.Module | None = None
    input_shape: tuple[int, ...] | None = None
    local_steps: int = 1
    lr: float | None = None
    generator: torch.Generator | None = None

    @property
    def classes(self) -> int:
        return self.weight.shape[0]

    @property
    def scale(self) -> float | None:
        """Mean-loss gradients the direction holds (``lr * U``), or None when ``lr`` is unknown."""
        return None if self.lr is None else self.lr * self.local_steps


Rule = Callable[[LabelContext], list[int]]


def last_layer_gradients(model: nn.Module, direction: dict[str, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last linear layer's weight gradient ``[C, D]`` and bias gradient ``[C]`` (or None)."""
    name = _last_linear_name(model)
    weight = direction[f"{name}.weight"]
    bias = direction.get(f"{name}.bias")
    return weight, bias


def _last_linear_name(model: nn.Module) -> str:
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise GradleakError("label inference needs a final linear layer; the model has none")
    return linears[-1]


def counts_to_labels(estimates: torch.Tensor | np.ndarray, count: int) -> list[int]:
    """Round non-negative per-class count estimates ``[C]`` to integers summing to ``count``
    (largest remainder on the clipped estimates rescaled to sum ``count``); sorted labels."""
    est = np.clip(np.nan_to_num(np.asarray(estimates, dtype=np.float64)), 0.0, None)
    if est.sum() <= 0:
        est = np.ones_like(est)
    quota = est * count / est.sum()
    counts = np.floor(quota).astype(int)
    remainder = count - counts.sum()
    # Stable sort: ties go to the lower class index, so the rounding is deterministic.
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:remainder]] += 1
    return [c for c in range(len(counts)) for _ in range(counts[c])]


@LABEL_RULES.register("idlg")
def idlg_labels(ctx: LabelContext) -> list[int]:
    """iDLG (Zhao et al. 2020): for one sample with non-negative last-layer inputs, only the true
    class row has a negative sum. With a shared bias the rule reads its gradient instead,
    ``b_c = p_c - y_c``: only the true class is negative whatever the inputs' signs (a BERT
    classifier's tanh-pooled features break the weight rule: measured on MiniLM, 1 of 2 right)."""
    if ctx.count != 1:
        raise GradleakError(
            f"attack.labels=idlg infers the label of one sample, but data.num_samples={ctx.count}; "
            "use attack.labels=yin for a batch with distinct labels, or llg/geng/ilrg"
        )
    if ctx.bias is not None:
        return [int(ctx.bias.argmin())]
    return [int(ctx.weight.sum(dim=1).argmin())]


@LABEL_RULES.register("yin")
def yin_labels(ctx: LabelContext) -> list[int]:
    """Yin et al. 2021 (GradInversion): the ``count`` classes whose rows have the smallest minimum
    entry; exact for distinct labels when ``count <= C``."""
    if ctx.count > ctx.classes:
        raise GradleakError(
            f"attack.labels=yin assumes distinct labels, but data.num_samples={ctx.count} exceeds "
            f"the {ctx.classes} classes"
        )
    return sorted(ctx.weight.min(dim=1).values.argsort()[:ctx.count].tolist())


@LABEL_RULES.register("llg")
def llg_labels(ctx: LabelContext) -> list[int]:
    """LLG (Wainakh et al. 2021): every class with ``s_c < 0`` once, then repeatedly the class with
    the smallest remaining ``s_c``, subtracting the per-sample impact
    ``m = (sum_{s_c<0} s_c)(1 + 1/C) / K`` from the chosen class's ``s_c`` each time.

    Scale-free (``m`` scales with the direction), so it works on FedSGD and FedAvg directions.
    """
    s = ctx.weight.sum(dim=1).double().clone()
    k, classes = ctx.count, ctx.classes
    negative = s < 0
    impact = float(s[negative].sum()) * (1 + 1 / classes) / k
    chosen: list[int] = []
    for c in s.argsort().tolist():  # most negative first, in case more than K are negative
        if len(chosen) == k or not negative[c]:
            break
        chosen.append(c)
        s[c] -= impact
    while len(chosen) < k:
        c = int(s.argmin())
        chosen.append(c)
        s[c] -= impact
    return sorted(chosen)


def _dummy_statistics(ctx: LabelContext, rule: str) -> tuple[torch.Tensor, float]:
    """Mean softmax ``p-bar [C]`` and mean summed last-layer input ``O-bar`` over random images."""
    if ctx.model is None or ctx.input_shape is None:
        raise GradleakError(f"attack.labels={rule} needs the model and the input shape to run "
                            "dummy inputs through the model")
    model = copy.deepcopy(ctx.model).eval()
    last = dict(model.named_modules())[_last_linear_name(model)]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    device = next(model.parameters()).device
    images = torch.rand((DUMMY_SAMPLES, *ctx.input_shape), generator=ctx.generator).to(device)
    try:
        with torch.no_grad():
            probs = torch.softmax(model(images).double(), dim=1)
    finally:
        handle.remove()
    activations = captured[0].flatten(1).double()
    return probs.mean(0).cpu(), float(activations.sum(1).mean())


@LABEL_RULES.register("geng")
def geng_labels(ctx: LabelContext) -> list[int]:
    """Geng et al. 2021 count estimate: ``n_c = K p-bar_c - K s_c / (O-bar * lr * U)``.

    Derivation: with ``p_kc ~ p-bar_c`` and ``sum_j a_k,j ~ O-bar``, one mean-loss gradient has
    ``s_c ~ p-bar_c O-bar - n_c O-bar / K``. A FedAvg direction sums U mini-batch means times lr;
    with equal mini-batches every sample enters U/ceil(N/B) times with weight 1/B = ceil(N/B)/N, so
    ``s_c / (lr U)`` has the same form. ``p-bar`` and ``O-bar`` come from random images through the
    global model (eval mode).

    Unknown lr (FedAvg without client details): the product ``T = O-bar * lr * U`` is fitted from
    the gradient instead. An absent class has ``s_c = T p-bar_c``, so T is the pooled ratio
    ``sum s_c / sum p-bar_c`` over the classes with ``s_c > 0``, refined over the classes whose
    rounded count is zero (three fixed-point passes).
    """
    p_bar, o_bar = _dummy_statistics(ctx, "geng")
    s = ctx.weight.sum(dim=1).double().cpu()
    k = ctx.count
    if ctx.scale is not None:
        return counts_to_labels(k * p_bar - k * s / (o_bar * ctx.scale), k)
    absent = s > 0
    labels: list[int] = []
    for _ in range(3):
        if not absent.any():
            break
        t = float(s[absent].sum() / p_bar[absent].sum())
        labels = counts_to_labels(k * p_bar - k * s / t, k)
        absent = torch.ones_like(absent)
        absent[torch.tensor(labels).unique()] = False
    return labels or counts_to_labels(-s, k)


@LABEL_RULES.register("ilrg")
def ilrg_labels(ctx: LabelContext) -> list[int]:
    """iLRG (Ma et al. 2023): instance-wise label counts from the last layer with bias.

    1. Class-mean embeddings ``e_c = g_c / b_c`` ``[C, D]`` (the ratio cancels the scale).
    2. Their softmax probabilities through the last layer, ``P [C, C]`` (row c: class-c samples).
    3. The bias gradient of one mean loss is ``b_j = (1/K)(sum_c n_c P_cj - n_j)``; solve
       ``(P^T - I) n = (K / scale) b`` with ``sum_c n_c = K`` by non-negative least squares.
       Unknown lr (FedAvg without client details): ``a = K / scale`` is fitted too, see below.
    4. Round to K by largest remainder.

    Best on untrained models (the paper's setting); the last layer needs a bias.
    """
    if ctx.bias is None:
        raise GradleakError("attack.labels=ilrg needs a bias on the last linear layer "
                            "(set model.bias=true) or use attack.labels=llg/geng")
    if ctx.model is None:
        raise GradleakError("attack.labels=ilrg needs the model to compute class probabilities")
    last = dict(ctx.model.named_modules())[_last_linear_name(ctx.model)]
    weight, bias = ctx.weight.double().cpu(), ctx.bias.double().cpu()
    k, classes = ctx.count, ctx.classes
    tiny = bias.abs().max().clamp_min(1e-300) * 1e-12
    safe = torch.where(bias.abs() < tiny, torch.full_like(bias, float(tiny)), bias)
    embeddings = weight / safe[:, None]
    with torch.no_grad():
        logits = embeddings @ last.weight.detach().double().cpu().T + last.bias.detach().double().cpu()
    probs = torch.softmax(logits, dim=1)  # [C (class of the embedding), C]
    system = (probs.T - torch.eye(classes, dtype=torch.float64)).numpy()
    if ctx.scale is not None:
        counts = _ilrg_counts(system, (k / ctx.scale) * bias.numpy(), k)
        return counts_to_labels(counts, k)
    # Unknown scale: (P^T - I) has the positive null vector of the Markov matrix P, so the scale
    # a = K / scale is not identified from the bias alone; it is once some classes are fixed at
    # zero count. Start from the classes with a positive bias gradient as absent, fit a there,
    # solve for the counts, and refit a on the classes rounded to zero (a few passes).
    absent = (bias > 0).numpy()
    counts = np.full(classes, k / classes)
    for _ in range(4):
        if absent.all() or not absent.any():
            break
        keep = ~absent
        a = np.vstack([np.hstack([system[:, keep], -bias.numpy()[:, None]]),
                       np.concatenate([_SUM_WEIGHT * np.ones(keep.sum()), [0.0]])[None]])
        rhs = np.concatenate([np.zeros(classes), [_SUM_WEIGHT * k]])
        scale_free = nnls(a, rhs)[0][-1]
        counts = _ilrg_counts(system, scale_free * bias.numpy(), k)
        labels = counts_to_labels(counts, k)
        absent = np.ones(classes, dtype=bool)
        absent[np.unique(labels)] = False
    return counts_to_labels(counts, k)


def _ilrg_counts(system: np.ndarray, rhs: np.ndarray, k: int) -> np.ndarray:
    """Non-negative least squares for ``system @ n = rhs`` together with ``sum(n) = k``."""
    a = np.vstack([system, _SUM_WEIGHT * np.ones((1, system.shape[1]))])
    return nnls(a, np.concatenate([rhs, [_SUM_WEIGHT * k]]))[0]


def infer_labels(rule: str, model: nn.Module, direction: dict[str, torch.Tensor], count: int, *,
                 input_shape: tuple[int, ...] | None = None, local_steps: int = 1,
                 lr: float | None = None, seed: int = 0) -> list[int]:
    """Infer ``count`` labels (sorted) with the named rule (see ``LABEL_RULES.names()``).

    ``direction``: the update's gradient direction; ``local_steps``/``lr``: the client's U and
    step size when known (``lr=1.0, local_steps=1`` for a FedSGD gradient; ``lr=None`` means the
    scale is unknown and scale-dependent rules estimate it). ``seed`` seeds the dummy inputs.
    """
    fn: Rule = LABEL_RULES.get(rule)
    weight, bias = last_layer_gradients(model, direction)
    ctx = LabelContext(
        weight=weight.detach(),
        bias=None if bias is None else bias.detach(),
        count=count,
        model=model,
        input_shape=None if input_shape is None else tuple(input_shape),
        local_steps=local_steps,
        lr=lr,
        generator=torch.Generator().manual_seed(seed),
    )
    return fn(ctx)
