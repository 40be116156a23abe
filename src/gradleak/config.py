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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gradleak.attack_settings import AttackConfig, preset_file, retype, settings_for, unknown_key
from gradleak.config_values import (
    check_config,
    check_value,
    coerce,
    describe,
    drop_added_defaults,
    flatten,
    option,
    parse_override,
    parse_text,
)
from gradleak.config_values import unflatten as unflatten  # re-exported: callers import it here
from gradleak.defense_config import DefenseConfig as DefenseConfig  # re-exported, as above
from gradleak.errors import GradleakError

_opt = option


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
    channels: int | None = _opt(None, choices=(1, 3), added=True, help="image channels the model "
                                "takes: 1 (RGB to luminance), 3 (grey repeated); null: as stored")
    max_length: int = _opt(32, minimum=2, added=True, help="text: tokens per sequence after the "
                           "model's tokenizer (padded / truncated; at most the model's maximum)")
    text_column: str = _opt("text", added=True, help="text .jsonl/.csv: the column holding the text")
    label_column: str | None = _opt("label", added=True, help="text .jsonl/.csv: the label column "
                                    "(null or absent: one class)")


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
    task: str = _opt("auto", choices=("auto", "classification", "causal_lm"), added=True,
                     help="text models: sequence classification or next-token (causal LM) "
                     "training; auto: causal_lm for decoders (gpt2-tiny, *ForCausalLM), else "
                     "classification")
    path: str | None = _opt(None, added=True, help="model.name=hf: the Hugging Face model "
                            "directory (config.json + *.safetensors + tokenizer); gpt2-tiny: a "
                            "`gradleak train-lm` directory to start from")
    hidden_size: int = _opt(256, minimum=8, added=True, help="gpt2-tiny: embedding width d")
    layers: int = _opt(2, minimum=1, added=True, help="gpt2-tiny: transformer blocks")
    heads: int = _opt(4, minimum=1, added=True, help="gpt2-tiny: attention heads (divide d)")
    frozen: list[str] = _opt([], added=True, help="parameter-name prefixes the client does not "
                             "train or share ('embeddings': a text model's word embedding)")
    lora_rank: int = _opt(0, minimum=0, added=True, help="text models: LoRA adapters of this rank "
                          "(peft); the client trains and shares only them (0: full fine-tuning)")
    lora_alpha: float = _opt(16.0, minimum=0.0, added=True, help="LoRA scale numerator (the "
                             "adapter is scaled by alpha / rank)")
    lora_targets: list[str] = _opt([], added=True, help="LoRA target module names (default: "
                                   "GPT-2 c_attn; BERT query, value)")
    precode: bool = _opt(False, added=True, help="PRECODE (Scheliga et al. 2022): a variational "
                         "bottleneck before the output layer; its KL term joins the client's loss")
    precode_size: int = _opt(256, minimum=1, added=True, help="precode: bottleneck size K (256)")
    precode_beta: float = _opt(1e-3, minimum=0.0, added=True, help="precode: KL weight (1e-3)")


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
    mix: str = _opt("none", choices=("none", "mixup", "instahide"), added=True,
                    help="train on k-way mixes of the client's own samples with mixed labels "
                         "(GradAttack's MixUp; InstaHide adds random pixel sign flips)")
    mix_k: int = _opt(4, minimum=1, added=True, help="mix: samples per encoding (GradAttack's klam)")
    mix_lower: float = _opt(0.0, minimum=0.0, added=True, help="mix: lowest coefficient allowed")
    mix_upper: float = _opt(0.65, minimum=0.0, added=True, help="mix: highest coefficient allowed")


@dataclass
class ThreatConfig:
    knows_priors: bool = _opt(True, help="level 1: image priors such as total variation")
    knows_data_distribution: bool = _opt(False, help="level 2: auxiliary data / generator")
    knows_client_config: bool = _opt(False, help="level 3: E, B, lr, N of the client")
    knows_bn_statistics: bool = _opt(False, help="level 4: the client's BN batch statistics")
    malicious: bool = _opt(False, help="level 5: the server may craft model parameters")
    knows_labels: bool = _opt(True, help="the victim's label multiset is known")
    knows_mixing: bool = _opt(False, added=True, help="client.mix: the client's mixing partners, "
                              "coefficients and signs (GradAttack's upper-bound attacker)")


# The paper's leakage thresholds (App. C): a sample leaks if PSNR >= 18 dB and LPIPS <= 0.1.
# Defined here once; gradleak.metrics.METRICS and the reports read them from here.
DEFAULT_PSNR_THRESHOLD = 18.0
DEFAULT_LPIPS_THRESHOLD = 0.1
# Text (gradleak.metrics.text): a sentence counts as recovered if ROUGE-1 F >= 0.9 (nine words
# in ten) and, with the MiniLM embedding, cosine similarity >= 0.9; and it beats the best
# update-free guess from the data distribution.
DEFAULT_ROUGE_THRESHOLD = 0.9
DEFAULT_SEMANTIC_THRESHOLD = 0.9


@dataclass
class MetricsConfig:
    lpips_net: str = _opt("alex", choices=("alex", "vgg"))
    psnr_threshold: float = _opt(DEFAULT_PSNR_THRESHOLD, help="a sample leaks if PSNR >= this ...")
    lpips_threshold: float = _opt(DEFAULT_LPIPS_THRESHOLD,
                                  help="... and LPIPS <= this (paper App. C)")
    baseline_pool: int = _opt(32, minimum=0,
                              help="... and beats update-free baselines: other samples drawn as "
                                   "the data mean, nearest-other and identification pool (0: flat "
                                   "mean colour only)")
    rouge_threshold: float = _opt(DEFAULT_ROUGE_THRESHOLD, minimum=0.0, added=True,
                                  help="text: a sentence leaks if ROUGE-1 F >= this ...")
    semantic_threshold: float = _opt(DEFAULT_SEMANTIC_THRESHOLD, minimum=0.0, added=True,
                                     help="... and MiniLM cosine similarity >= this, beating "
                                          "the best sentence of the baseline pool")


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
    dp: bool = _opt(False, help="client-side DP-SGD on top of defense.name (defense.name=dpsgd "
                    "alone is the same training)")
    dp_noise_multiplier: float = _opt(1.0, minimum=0.0, help="alias of defense.dp_noise_multiplier")
    dp_max_grad_norm: float = _opt(1.0, minimum=0.0, help="alias of defense.dp_max_grad_norm")
    dp_delta: float = _opt(1e-5, minimum=0.0, help="alias of defense.dp_delta")
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
        tree = self.to_dict()
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if dataclasses.is_dataclass(value):
                drop_added_defaults(value, tree[section.name])
        for key in _DP_KEYS:  # an alias's twin holds the same value: hashed once, under fl.*,
            tree["defense"].pop(key)  # so stores recorded before the twins keep resuming
        blob = json.dumps(tree, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


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
            if depth == 1 and parts[0] == "attack":
                raise unknown_key(cfg.attack.name, part)
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
        if key in ALIASES:  # both spellings hold the one value (the fl.* ones are contracts)
            section, field_name = ALIASES[key].split(".")
            setattr(getattr(cfg, section), field_name, coerced)
        if key == "attack.name":  # a plug-in attack's own keys come (and go) with its name
            cfg.attack = retype(cfg.attack, coerced)
        return


# DP-SGD is the defense ``dpsgd``; its settings keep their older ``fl.dp_*`` names as aliases.
_DP_KEYS = ("dp_noise_multiplier", "dp_max_grad_norm", "dp_delta")
ALIASES: dict[str, str] = {**{f"fl.{k}": f"defense.{k}" for k in _DP_KEYS},
                           **{f"defense.{k}": f"fl.{k}" for k in _DP_KEYS}}


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

    file: Any = preset_file(name) or resources.files("gradleak").joinpath(
        f"configs/attacks/{name}.yaml")
    if not file.is_file():
        return {}
    tree = yaml.safe_load(file.read_text()) or {}
    if not isinstance(tree, dict):
        raise GradleakError(f"attack preset {str(file)!r} must hold a mapping of attack keys")
    return {"attack": tree}


# Keys whose value may name user code to import (``model.name=path/file.py:NAME`` or
# ``package.module:NAME``): accepted only from what the user typed (command-line overrides) or
# passed in Python, never from a file gradleak reads as data (the "no code from data" rule).
CODE_KEYS = ("model.name",)


def names_code(key: str, value: Any) -> bool:
    """Whether ``key=value`` names user code (``...:NAME``) rather than a registered name."""
    return key in CODE_KEYS and isinstance(value, str) and ":" in value


def refuse_code(items: list[tuple[str, Any]] | dict[str, Any], where: str, *,
                unless: Iterable[str] = ()) -> None:
    """One-line refusal if ``items`` (read from data: ``where``) name code to import; keys in
    ``unless`` are skipped (a later source the user typed replaces them)."""
    skip = set(unless)
    for key, value in (items.items() if isinstance(items, dict) else items):
        if key not in skip and names_code(key, value):
            raise GradleakError(f"{key}={value} names code; pass it on the command line "
                                f"({key}=...) or in Python, not in {where}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                *, base: dict[str, Any] | None = None, trusted_base: bool = False) -> Config:
    """Defaults, the chosen attack's preset, an optional ``base`` dict, a YAML file, then dotted
    overrides: each later source wins. ``overrides`` are what the user typed (or passed in
    Python) and may name user code (``model.name=file.py:NAME``); the YAML file and ``base`` are
    data and may not, unless ``trusted_base`` says the caller built ``base`` from such input."""
    typed = [parse_override(item) for item in overrides]
    items = flatten(base or {})
    if not trusted_base:
        refuse_code(items, "a plan, store or other config data", unless=dict(typed))
    if path is not None:
        from_file = flatten(_read_yaml(path))
        refuse_code(from_file, f"the config file {str(path)!r}", unless=dict(typed))
        items += from_file
    items += typed
    # The last attack.name wins; it is set first, so every attack key is checked against the
    # attack that runs (a plug-in's own keys are valid only with its name).
    names = [value for key, value in items if key == "attack.name"]
    items = [(key, value) for key, value in items if key != "attack.name"]
    cfg = Config()
    if names:
        set_key(cfg, "attack.name", names[-1])
    # The preset's keys come first (the sources above win); each key is set and checked once.
    for key, value in flatten(attack_preset(cfg.attack.name)) + items:
        set_key(cfg, key, value)
    check_config(cfg)
    settings_for(cfg.attack.name).of(cfg.attack)  # a family's own checks (its __post_init__)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (validated like any other input; a
    stored dict is data, so it may not name user code)."""
    return load_config(base=tree)
