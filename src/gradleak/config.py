"""The Scenario config: a dataclass tree, YAML files and dotted ``key=value`` overrides.

Every key is validated when it is set; an unknown key or a bad value raises one
:class:`GradleakError` naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gradleak.config_values import check_config, check_value, coerce, describe, parse_text
from gradleak.errors import GradleakError


def _opt(default: Any, *, choices: tuple | None = None, minimum: float | None = None,
         help: str = "") -> Any:
    meta = {"choices": choices, "minimum": minimum, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = _opt("skimage", help="dataset name, see `gradleak datasets`")
    resolution: int = _opt(32, minimum=4, help="image side in pixels")
    num_samples: int = _opt(1, minimum=1, help="N: samples held by the victim client")
    root: str | None = _opt(None, help="folder with the dataset files")
    download: bool = _opt(False, help="download missing files (needs internet)")
    split: str = _opt("train", choices=("train", "test"))
    indices: list[int] | None = _opt(None, help="explicit victim sample indices")
    distinct_labels: bool = _opt(True, help="draw victim samples with distinct labels when possible")
    test_root: str | None = _opt(None, help="imagefolder/npz: the held-out test data (a class "
                                 "folder tree or a .npz file) when it is not under data.root")
    holdout: float = _opt(0.2, minimum=0.0, help="imagefolder/npz without a test split: share of "
                          "each class held out as the test split, never used for training")


@dataclass
class ModelConfig:
    name: str = _opt("convnet", help="model name, see `gradleak models`")
    width: int = _opt(64, minimum=1, help="ConvNet base channel count (Geiping et al.: 64)")
    depth: int = _opt(3, minimum=1, help="ConvNet number of conv layers")
    norm: str = _opt("batch", choices=("batch", "group", "none"))
    bias: bool = _opt(True)
    activation: str = _opt("relu", choices=("relu", "leaky_relu", "sigmoid", "tanh", "none"))
    dropout: float = _opt(0.0, minimum=0.0)
    pooling: str = _opt("max", choices=("max", "avg", "none"))
    kernel_size: int = _opt(3, minimum=1)
    padding: int = _opt(1, minimum=0)
    hidden: list[int] = _opt([512, 256], help="MLP hidden widths")
    init: str = _opt("default", choices=("default", "uniform"),
                     help="'uniform' is DLG's U(-0.5, 0.5) init")
    checkpoint: str | None = _opt(None, help="state_dict file of a trained global model")
    normalize: bool = _opt(True, help="standardise inputs with the dataset mean/std inside the model")
    input_mean: list[float] | None = _opt(None, help="per-channel mean the model expects instead of "
                                          "the dataset's (with normalize=true)")
    input_std: list[float] | None = _opt(None, minimum=0.0, help="per-channel std the model "
                                         "expects instead of the dataset's (with normalize=true)")
    small_input: bool = _opt(True, help="zoo models: CIFAR-size stem that keeps detail at 32 px")
    skip_cuts: list[int] = _opt([], minimum=1,
                                help="ResNets: 1-based residual blocks whose identity path is cut")
    dense_connections: str = _opt("full", choices=("full", "reduced", "minimal", "shortnet1",
                                                   "shortnet2"),
                                  help="densenet43/53: which earlier feature maps each layer reads")


@dataclass
class ClientConfig:
    protocol: str = _opt("fedsgd", choices=("fedsgd", "fedavg"))
    local_epochs: int = _opt(1, minimum=1, help="E")
    batch_size: int | None = _opt(None, minimum=1, help="B; null means all N samples")
    lr: float = _opt(0.1, minimum=0.0, help="local learning rate")
    bn_mode: str = _opt("auto", choices=("auto", "eval", "train"),
                        help="BatchNorm while training: auto = train for fedavg (what "
                             "model.train() does), eval for fedsgd")
    optimizer: str = _opt("sgd", choices=("sgd", "adam", "adamw"),
                          help="fedavg: the client's local optimiser (Adam betas 0.9/0.999)")
    momentum: float = _opt(0.0, minimum=0.0, help="fedavg, sgd: momentum (dampening 0)")
    nesterov: bool = _opt(False, help="fedavg, sgd: Nesterov momentum (needs momentum > 0)")
    weight_decay: float = _opt(0.0, minimum=0.0,
                               help="fedavg: L2 added to the gradient (adamw: decoupled)")
    augment: str = _opt("none", choices=("none", "flip", "crop_flip"),
                        help="per-sample random flips / CIFAR crop (pad R/8) + flip")
    label_smoothing: float = _opt(0.0, minimum=0.0, help="cross-entropy label smoothing, < 1")


@dataclass
class AttackConfig:
    name: str = _opt("ig", help="attack name, see `gradleak attacks`")
    iterations: int = _opt(2000, minimum=1)
    lr: float = _opt(0.1, minimum=0.0)
    tv: float = _opt(1e-4, minimum=0.0, help="total-variation prior weight")
    tv_border: str = _opt("none", choices=("none", "zero"),
                          help="none: Geiping et al.'s TV; zero: breaching's, which also pulls the "
                               "right/bottom edge pixels towards 0")
    restarts: int = _opt(1, minimum=1)
    labels: str = _opt("known", choices=("known", "idlg", "yin", "llg", "geng", "ilrg"))
    init: str = _opt("randn", choices=("randn", "rand", "gray", "normal"),
                     help="randn: mean + std * N(0, 1) in pixels; normal: N(0, 1) as in DLG")
    lr_decay: bool = _opt(True, help="step decay x0.1 at 3/8, 5/8, 7/8 of the run")
    bins: int = _opt(64, minimum=2, help="imprint: measurement bins k of the imprint module "
                     "(keep k well above N so that samples rarely share a bin)")
    distance: str = _opt("cosine", choices=("cosine", "l2"), help="gradient distance")
    distance_scale: float = _opt(1.0, minimum=0.0, help="weight of the gradient distance")
    optimizer: str = _opt("adam", choices=("adam", "lbfgs"))
    signed: bool = _opt(True, help="Adam on the sign of the image gradient (Geiping et al.)")
    box: bool = _opt(True, help="clamp images to [0, 1] after each step")
    l2: float = _opt(0.0, minimum=0.0, help="image L2-norm prior weight")
    bn: float = _opt(0.0, minimum=0.0, help="BN-statistics prior weight (GradInversion)")
    bn_source: str = _opt("client", choices=("client", "running"),
                          help="BN prior targets: the client's batch statistics (level 4) or the "
                               "model's running statistics")
    layers: list[str] | None = _opt(None, help="match only parameters with these name prefixes")
    learn_labels: bool = _opt(False, help="optimise soft labels jointly (DLG)")
    keep: str = _opt("last", choices=("last", "best"),
                     help="GIA-O: return each restart's last iterate or its lowest-gradient-loss one")
    group: int = _opt(1, minimum=1, help="GIA-O: members optimised jointly per restart from different "
                      "seeds, pulled to their consensus (GradInversion's group consistency)")
    group_weight: float = _opt(0.01, minimum=0.0, help="weight of the group-consistency prior")
    group_every: int = _opt(100, minimum=1, help="iterations between consensus updates (the "
                            "first at this iteration: members start independent)")
    stop: bool = _opt(False, help="GIA-O: end a restart once its gradient loss stops improving "
                      "(a plateau first brings the next lr decay forward; see stop_window)")
    stop_tolerance: float = _opt(1e-3, minimum=0.0, help="attack.stop: a plateau is a relative "
                                 "improvement of the best gradient loss <= this over stop_window")
    stop_window: int = _opt(100, minimum=1, help="attack.stop: iterations per plateau test; never "
                            "stops before this many iterations")
    max_seconds: float | None = _opt(None, minimum=0.0, help="GIA-O: wall-clock budget of the "
                                     "attack, split evenly over its restarts (null: none)")
    compile: bool = _opt(False, help="GIA-O: torch.compile the functional objective (falls back "
                         "to the autograd path with a warning where it cannot)")
    batch_restarts: str = _opt("auto", choices=("auto", "on", "off"),
                               help="GIA-O: run restarts as one vmapped problem; auto = on CUDA only")
    generator: str | None = _opt(None, help="gias/ggl: generator.pt from `gradleak train-generator`")
    latent_iterations: int = _opt(400, minimum=1, help="gias stage 1: latent search steps")
    generator_iterations: int = _opt(600, minimum=0,
                                     help="gias stage 2: per-image generator fine-tuning steps")
    generator_lr: float = _opt(1e-3, minimum=0.0, help="gias stage 2 learning rate")
    ggl_budget: int = _opt(2000, minimum=1, help="ggl: CMA-ES loss evaluations per restart")
    adaptive: bool = _opt(False, help="apply the known defense (or a surrogate) to trial gradients")
    rog_scale: int = _opt(4, minimum=1, help="rog: the optimised image is H/scale x W/scale")
    postprocess: str | None = _opt(None, help="rog: post-processing network file (TorchScript)")


@dataclass
class ThreatConfig:
    knows_priors: bool = _opt(True, help="level 1: image priors such as total variation")
    knows_data_distribution: bool = _opt(False, help="level 2: auxiliary data / generator")
    knows_client_config: bool = _opt(False, help="level 3: E, B, lr, N of the client")
    knows_bn_statistics: bool = _opt(False, help="level 4: the client's BN batch statistics")
    malicious: bool = _opt(False, help="level 5: the server may craft model parameters")
    knows_labels: bool = _opt(True, help="the victim's label multiset is known")


@dataclass
class DefenseConfig:
    name: str = _opt("none", help="defense name, see `gradleak defenses`")
    bits: int = _opt(4, minimum=1, help="qsgd: bits of the magnitude index, s = 2^bits - 1")
    levels: int | None = _opt(None, minimum=1, help="qsgd: s quantisation levels, overrides bits")
    sparsity: float = _opt(0.9, minimum=0.0, help="topk: fraction of entries zeroed, in [0, 1]")
    bound: float = _opt(0.1, minimum=0.0, help="clip: entries clamped to [-bound, bound]")
    clip_norm: float | None = _opt(None, minimum=0.0,
                                   help="clip_norm: max L2 norm of the update; gaussian: clip first")
    noise_multiplier: float = _opt(0.1, minimum=0.0,
                                   help="gaussian: noise std = multiplier * (clip_norm or 1)")
    scale_sign: bool = _opt(False, help="signsgd: scale signs by the tensor's mean |value|")
    per_tensor: bool = _opt(True, help="qsgd/signsgd/topk: per tensor, else over the whole update")


@dataclass
class MetricsConfig:
    lpips_net: str = _opt("alex", choices=("alex", "vgg"))
    psnr_threshold: float = _opt(18.0, help="a sample leaks if PSNR >= this ...")
    lpips_threshold: float = _opt(0.1, help="... and LPIPS <= this (paper App. C)")


@dataclass
class FLConfig:
    """Federated training around the victim (paper App. B iii: 100 clients, 10% per round)."""

    clients: int = _opt(100, minimum=1, help="K: clients in the pool, the victim included")
    fraction: float = _opt(0.1, minimum=0.0, help="share of the K clients sampled per round, (0, 1]")
    rounds: int = _opt(10, minimum=1, help="R: communication rounds")
    partition: str = _opt("iid", choices=("iid", "dirichlet"),
                          help="how the non-victim train data is split over the other clients")
    alpha: float = _opt(0.5, minimum=0.0, help="dirichlet concentration: small = skewed labels")
    victim_samples: int | None = _opt(None, minimum=1,
                                      help="N of the victim client; null: data.num_samples")
    attack_round: int | None = _opt(None, minimum=1,
                                    help="round (1..R) whose victim update is attacked; null: R")
    secure_aggregation: bool = _opt(False, help="the server sees only the aggregate update")
    dp: bool = _opt(False, help="client-side DP-SGD: per-sample clipping + Gaussian noise")
    dp_noise_multiplier: float = _opt(1.0, minimum=0.0, help="DP-SGD noise std / max_grad_norm")
    dp_max_grad_norm: float = _opt(1.0, minimum=0.0, help="DP-SGD per-sample L2 clipping bound")
    dp_delta: float = _opt(1e-5, minimum=0.0, help="delta of the reported (epsilon, delta)")
    test_samples: int | None = _opt(None, minimum=1, help="evaluate on this many test samples")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    seed: int = _opt(0, minimum=0)
    device: str = _opt("cpu", help="torch device, e.g. cpu or cuda")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable short hash of the resolved config (for run ids and result stores)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --- setting and validating keys -------------------------------------------------------------


def _section_fields(obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def valid_keys(cfg: Config | None = None) -> list[str]:
    """All dotted keys a Config accepts."""
    cfg = cfg or Config()
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{sub.name}" for sub in dataclasses.fields(value)]
        else:
            keys.append(f.name)
    return keys


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set dotted ``key`` to ``value`` (a string from the command line, or a YAML value)."""
    parts = key.split(".")
    target: Any = cfg
    for depth, part in enumerate(parts):
        fields = _section_fields(target) if dataclasses.is_dataclass(target) else {}
        if part not in fields:
            raise GradleakError(
                f"unknown config key {key!r}; allowed keys: {', '.join(valid_keys(cfg))}"
            )
        if depth < len(parts) - 1:
            target = getattr(target, part)
            continue
        f = fields[part]
        if dataclasses.is_dataclass(getattr(target, part)):
            raise GradleakError(f"config key {key!r} is a section; set one of its keys instead")
        hints = _type_hints(type(target))
        tp = hints[part]
        if isinstance(value, str) and typing.get_origin(tp) is not list and tp is not str:
            parsed = parse_text(value)
        else:
            parsed = value
        try:
            coerced = coerce(parsed, tp)
        except (TypeError, ValueError, OverflowError):
            raise GradleakError(
                f"bad value {value!r} for {key}: expected {describe(tp)}"
                + (" (a finite number)" if "float" in describe(tp) else "")
            ) from None
        check_value(key, value, coerced, choices=f.metadata.get("choices"),
                    minimum=f.metadata.get("minimum"))
        setattr(target, part, coerced)
        return


def flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]`` (dotted keys, depth first)."""
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def unflatten(items: dict[str, Any] | list[tuple[str, Any]]) -> dict[str, Any]:
    """``{"a.b": 1}`` (or ``[("a.b", 1)]``) -> ``{"a": {"b": 1}}``; later items win."""
    tree: dict[str, Any] = {}
    for key, value in (items.items() if isinstance(items, dict) else items):
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise GradleakError(f"bad config key {key!r}: {part!r} is not a section")
        node[last] = value
    return tree


def parse_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise GradleakError(f"bad override {item!r}: expected key=value, e.g. attack.iterations=500")
    key, value = item.split("=", 1)
    return key.strip(), value


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise GradleakError(f"config file {str(p)!r} does not exist")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise GradleakError(f"config file {str(p)!r} is not valid YAML: {first}") from None
    if not isinstance(tree, dict):
        raise GradleakError(f"config file {str(p)!r} must hold a mapping of sections")
    return tree


def attack_preset(name: str) -> dict[str, Any]:
    """The packaged defaults of one attack (``configs/attacks/<name>.yaml``), or ``{}``."""
    return copy.deepcopy(_attack_preset(name))


@functools.cache
def _attack_preset(name: str) -> dict[str, Any]:
    from importlib import resources

    file = resources.files("gradleak").joinpath(f"configs/attacks/{name}.yaml")
    if not file.is_file():
        return {}
    return {"attack": yaml.safe_load(file.read_text()) or {}}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                *, base: dict[str, Any] | None = None) -> Config:
    """Defaults, the chosen attack's preset, an optional ``base`` dict, a YAML file, then dotted
    overrides: each later source wins."""
    items = flatten(base or {})
    if path is not None:
        items += flatten(_read_yaml(path))
    items += [parse_override(item) for item in overrides]
    probe = Config()
    for key, value in items:  # validates every key once, and finds the attack's name
        set_key(probe, key, value)
    cfg = Config()
    for key, value in flatten(attack_preset(probe.attack.name)) + items:
        set_key(cfg, key, value)
    check_config(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (validated like any other input)."""
    return load_config(base=tree)
