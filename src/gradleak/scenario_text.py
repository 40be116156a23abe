"""The text steps of :class:`gradleak.scenario.Scenario`: the same pipeline, text inputs.

A text scenario differs from an image one in four places only, all here: the model comes from
:func:`gradleak.models.hf.build_text_model` and brings its tokenizer, the dataset is seen through
that tokenizer (``[N, 2, L]`` batches of ids and attention masks), the client's loss targets are
the model's (class labels, or the next tokens of a causal LM), and scoring decodes the
reconstruction and uses the text metrics (:mod:`gradleak.metrics.text`). Clients, defenses,
DP-SGD, the threat model, the seed streams, the store and the report are the image ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradleak.config import Config
from gradleak.errors import GradleakError
from gradleak.models.text import TextModel, is_text_model


def is_text_model_name(name: str) -> bool:
    from gradleak.models.hf import is_text_model_name as named

    return named(name)


def is_text_dataset(dataset: object) -> bool:
    return getattr(dataset, "modality", None) == "text"


def build_text_model_for(cfg: Config, dataset: Any, model: nn.Module | None) -> TextModel:
    """The scenario's text model: ``model`` (the user's :class:`TextModel`) or the one
    ``cfg.model`` names, checked against ``data.max_length``."""
    from gradleak.models.hf import build_text_model, check_max_length

    if model is None:
        model = build_text_model(cfg.model, num_classes=dataset.num_classes, seed=cfg.seed)
    elif not is_text_model(model):
        raise GradleakError(f"data.dataset={cfg.data.dataset} is text: pass a "
                            "gradleak.models.text.TextModel (a Hugging Face model and its "
                            f"tokenizer), not {type(model).__name__}")
    check_max_length(model, cfg.data.max_length)
    return model


def check_modalities(cfg: Config, *, text_data: bool, text_model: bool | None = None,
                     attack_modality: str | None = None) -> None:
    """One line when a text model meets image data or an image model text data, when the attack
    (of ``attack_modality``) is for the other kind, and for image settings that have no meaning on
    text. ``text_model``: whether the user's model object is one (default: what ``model.name``
    names)."""
    from gradleak.models.hf import is_text_model_name

    if text_model is None:
        text_model = is_text_model_name(cfg.model.name)
    if text_model and not text_data:
        raise GradleakError(f"the model (model.name={cfg.model.name}) is a text model but data.dataset="
                            f"{cfg.data.dataset} holds images; use a text dataset (wordnet, "
                            "wordnet-examples, personal, text)")
    if text_data and not text_model:
        raise GradleakError(f"data.dataset={cfg.data.dataset} holds text but the model ("
                            f"model.name={cfg.model.name}) is an image model; use minilm, "
                            "gpt2-tiny or hf (with model.path=DIR)")
    if attack_modality is not None and (attack_modality == "text") != text_data:
        what = "text" if text_data else "images"
        raise GradleakError(f"attack.name={cfg.attack.name} attacks {attack_modality} models, but "
                            f"data.dataset={cfg.data.dataset} holds {what}; see `gradleak "
                            "attacks` (column modality)")
    if text_data and cfg.client.augment != "none":
        raise GradleakError(f"client.augment={cfg.client.augment} is an image augmentation; "
                            "text clients train with client.augment=none")
    if text_data and cfg.client.mix != "none":
        raise GradleakError(f"client.mix={cfg.client.mix} mixes images; text clients train with "
                            "client.mix=none")


def modality_of(attack: object) -> str:
    """What an attack inverts: its ``info.modality`` (a plug-in or test double without one:
    ``image``, the built-in default)."""
    return getattr(getattr(attack, "info", None), "modality", "image")


def check_attack_model(cfg: Config, attack_modality: str) -> bool:
    """Whether ``model.name`` names a text model; one line when the attack is for the other kind
    (a user's model file may be either: its check waits for the model)."""
    from gradleak.models import is_user_model

    text = is_text_model_name(cfg.model.name)
    if text != (attack_modality == "text") and not is_user_model(cfg.model.name):
        kind = "a text" if text else "an image"
        raise GradleakError(f"attack.name={cfg.attack.name} attacks {attack_modality} models, but "
                            f"model.name={cfg.model.name} is {kind} model (see `gradleak "
                            "attacks`, column modality)")
    return text


@dataclass
class TextScore:
    """A text reconstruction scored against the victim's sentences (after optimal matching).

    ``values``: the batch means (``rouge1``, ``rouge2``, ``rougeL``, ``token_accuracy``,
    ``exact``, ``semantic``, ``critical_recall``, ``token_precision``, ``token_recall``,
    ``leak_rate``), ``None`` with a reason in ``warnings`` where not computable; ``per_sample``:
    one entry per victim sentence (original and reconstruction included).
    """

    values: dict[str, Any]
    per_sample: dict[str, list]
    thresholds: dict[str, float]
    matching: list[int | None]
    matched: torch.Tensor  # the reconstruction's rows in the victim's order ([N, 2, L])
    warnings: list[str] = field(default_factory=list)
    baselines: dict[str, Any] = field(default_factory=dict)
    wsrr_initializations: int = 1
    bag: list[str] | None = None  # a bag attack's tokens, decoded one by one
    token_marks: list[list[tuple[str, bool]]] | None = None  # bag: each truth token, found?

    def metrics(self) -> dict[str, Any]:
        """The ``metrics`` block of ``result.json``."""
        return dict(self.values)


def _rows(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[i] for i in range(x.shape[0])]


def score_text_reconstruction(recon: Any, truth: torch.Tensor, *, model: TextModel,
                              dataset: Any, indices: list[int], reference: list[str] | None,
                              cfg: Config) -> TextScore:
    """Decode ``recon.images`` and the victim batch ``truth`` ``[N, 2, L]`` with the model's
    tokenizer and score them with :func:`gradleak.metrics.text.score_text`. Ground truth is what
    the client trained on (the tokenised, truncated sentence), and its private strings those that
    survived truncation."""
    from gradleak.metrics.text import score_text

    tok = model.tokenizer
    got = recon.images.cpu()
    truth_rows, recon_rows = _rows(truth.cpu()), _rows(got)
    truth_texts = [tok.decode(r) for r in truth_rows]
    critical = None
    if getattr(dataset, "critical", None) is not None and indices:
        critical = [[c for c in dataset.critical_of(i) if c.lower() in t.lower()]
                    for i, t in zip(indices, truth_texts, strict=True)]
    truth_ids = [tok.token_ids(r) for r in truth_rows]
    s = score_text([tok.decode(r) for r in recon_rows], truth_texts,
                   recon_ids=[tok.token_ids(r) for r in recon_rows], truth_ids=truth_ids,
                   critical=critical, critical_ids=_critical_ids(tok, critical, truth_ids),
                   reference_texts=reference, bag=recon.bag,
                   rouge_threshold=cfg.metrics.rouge_threshold,
                   semantic_threshold=cfg.metrics.semantic_threshold)
    order = s["matching"]
    pad = torch.zeros_like(truth[0]).cpu()
    pad[0] = tok.pad_id
    matched = torch.stack([got[j] if j is not None and not recon.bag else pad for j in order]
                          ) if order else truth.new_zeros((0, *truth.shape[1:]))
    bag = marks = None
    if recon.bag:
        found = {i for r in recon_rows for i in tok.token_ids(r)}
        bag = [tok.hf.decode([i]) for i in sorted(found)]
        marks = [[(tok.hf.decode([i]), i in found) for i in tok.token_ids(r)] for r in truth_rows]
    return TextScore(values=s["metrics"], per_sample=s["per_sample"], thresholds=s["thresholds"],
                     matching=order, matched=matched, warnings=list(s["warnings"]),
                     baselines=s["baselines"], bag=bag, token_marks=marks)


def _critical_ids(tok: Any, critical: list[list[str]] | None,
                  truth_ids: list[list[int]]) -> list[list[list[int]]] | None:
    """Each private string's token ids as the client's tokenizer wrote it in its sentence:
    with a leading space inside a sentence (byte-level BPE), without one at its start; the
    variant found in the sentence's ids, else the in-sentence one."""
    if critical is None:
        return None
    out = []
    for strings, ids in zip(critical, truth_ids, strict=True):
        row = []
        for s in strings:
            variants = [[int(i) for i in tok.hf(v, add_special_tokens=False)["input_ids"]]
                        for v in (" " + s, s)]
            row.append(next((v for v in variants if _contains(ids, v)), variants[0]))
        out.append(row)
    return out


def _contains(ids: list[int], part: list[int]) -> bool:
    n = len(part)
    return n > 0 and any(ids[i:i + n] == part for i in range(len(ids) - n + 1))


def text_reference(dataset: Any, exclude: list[int], *, size: int, seed: int) -> list[str] | None:
    """Up to ``size`` sentences of the dataset other than the victim's (baseline seed stream),
    decoded as the model sees them: the update-free guesses of the leak criterion."""
    if size <= 0 or len(dataset) <= len(exclude):
        return None
    banned = set(exclude)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [i for i in order if i not in banned][:size]
    x, _ = dataset.tensors(chosen)
    return [dataset.tokenizer.decode(r) for r in _rows(x)] or None


def describe_text_data(dataset: Any) -> dict[str, Any]:
    """What a text result records about the data."""
    return {"name": dataset.name, "size": len(dataset), "classes": dataset.num_classes,
            "modality": "text", "max_length": dataset.max_length,
            "split": getattr(dataset.source, "split_note", None),
            "transform": getattr(dataset.source, "transform_note", None)}


def text_notes(model: TextModel, images: torch.Tensor, cfg: Config | None = None) -> list[str]:
    """Scenario warnings for text: more real tokens than the embedding width (the span of the
    first layer's inputs is then the whole space: DAGER's span test accepts every token), and a
    LAMP prior trained on the victims' split."""
    from gradleak.attacks.lm_prior import prior_overlap

    notes = prior_overlap(cfg) if cfg is not None else []
    tokens = int(images[:, 1].sum())
    if tokens >= model.hidden_size:
        return notes + [f"the batch holds {tokens} real tokens, at least the embedding width "
                f"{model.hidden_size}: the inputs may span the whole space, so span-based attacks "
                "(dager) cannot single out the batch's tokens"]
    return notes


def text_record(model: TextModel, score: TextScore) -> dict[str, Any]:
    """The ``text`` block of ``result.json``: per sentence, what the client trained on and what
    the attack recovered, with the model's source and task."""
    ps = score.per_sample
    sentences = [{"original": o, "reconstruction": r}
                 for o, r in zip(ps.get("original", []), ps.get("reconstruction", []), strict=True)]
    out: dict[str, Any] = {"model": model.source, "task": model.task, "sentences": sentences}
    if score.bag is not None:
        out["bag"] = score.bag
        for s, marks in zip(sentences, score.token_marks or [], strict=False):
            s["tokens"] = [[t, hit] for t, hit in marks]
    return out
