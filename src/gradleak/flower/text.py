"""Text models in the Flower audit: a gradleak :class:`~gradleak.models.text.TextModel` as the app's
model (a Hugging Face model and its tokenizer, e.g. ``build_text_model`` on ``gpt2-tiny`` with
LoRA), its sentences as the samples.

A Flower LLM app usually sends only what it trains (LoRA adapters: ``get_peft_model_state_dict``),
so the global arrays may be a subset of the model's ``state_dict``: every array must name one of
the model's tensors, every *trainable* parameter must be among them, and the other tensors (the
frozen base model) are those ``model_fn`` builds, which the server knows (it sent the base model).
Text batches are ``[N, 2, L]`` (token ids, attention mask), ``L = data.max_length``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from flwr.app import ArrayRecord
from torch import nn

from gradleak.config import Config
from gradleak.data.text import TextDataset
from gradleak.errors import GradleakError
from gradleak.flower.arrays import private_rng, to_tensors
from gradleak.models.text import TextModel, is_text_model
from gradleak.scenario import Scenario

PLACEHOLDER = "."  # the text of an unknown sample: a shape carrier, never scored


def load_arrays(model: TextModel, arrays: ArrayRecord) -> None:
    """Load ``arrays`` (all of the model's tensors, or a subset holding every trainable
    parameter) into ``model``; one line when a key is foreign or a trainable one is missing."""
    tensors = to_tensors(arrays)
    own = model.state_dict()
    foreign = [k for k in tensors if k not in own]
    if foreign:
        raise GradleakError(f"the arrays do not fit model_fn's model: {foreign[0]!r} is not one of "
                            f"its tensors (e.g. {next(iter(own))!r})")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in tensors]
    if missing:
        raise GradleakError(f"the arrays hold no {missing[0]!r}, a trainable parameter of "
                            "model_fn's model: send every tensor the client trains")
    bad = next((k for k, t in tensors.items() if t.shape != own[k].shape), None)
    if bad is not None:
        raise GradleakError(f"the arrays do not fit model_fn's model: shape of {bad} "
                            f"{tuple(tensors[bad].shape)} vs {tuple(own[bad].shape)} (arrays vs model)")
    model.load_state_dict(tensors, strict=False)


def text_shape(model: TextModel, cfg: Config, input_shape: Sequence[int] | None) -> tuple[int, int]:
    """The text batch row shape ``(2, L)``: ``input_shape`` when given, else
    ``(2, data.max_length)``; one line when it is not a text shape or exceeds the model."""
    shape = tuple(input_shape) if input_shape is not None else (2, int(cfg.data.max_length))
    if len(shape) != 2 or shape[0] != 2 or shape[1] < 2:
        raise GradleakError(f"bad value {shape!r} for input_shape with a text model: (2, L), token "
                            "ids and attention mask of L >= 2 tokens (or leave it out: "
                            "data.max_length)")
    limit = model.max_positions
    if limit is not None and shape[1] > limit:
        raise GradleakError(f"bad value {shape[1]} for the sequence length: the model takes at "
                            f"most {limit} positions")
    return shape  # type: ignore[return-value]


def text_scenario(cfg: Config, model: TextModel, ids: torch.Tensor, labels: torch.Tensor, *,
                  reference: Sequence[str] | None, known: bool) -> Scenario:
    """A text Scenario on the app's model: victims ``ids [N, 2, L]`` (the rows 0..N-1 of its
    dataset, ``known``: real sentences rather than placeholders), then the server's
    ``reference`` sentences (public text of the clients' distribution: the update-free guesses of
    the leak criterion, never the victims')."""
    tok = model.tokenizer
    texts = [tok.decode(ids[i]) or PLACEHOLDER for i in range(ids.shape[0])] if known else \
        [PLACEHOLDER] * ids.shape[0]
    texts += [t for t in (reference or ()) if t.strip()]
    classes = tuple(str(c) for c in range(max(1, model.num_classes if model.task ==
                                              "classification" else 1)))
    dataset = TextDataset("flower-client", texts, [int(v) for v in labels.tolist()] +
                          [0] * (len(texts) - ids.shape[0]), classes)
    # The victims are the dataset's first rows: the reference pool then never holds them.
    return Scenario.from_config(cfg, model=model, data=dataset, victim=(ids, labels),
                                victim_indices=list(range(ids.shape[0])))


def placeholder_batch(n: int, shape: Sequence[int]) -> torch.Tensor:
    """``[n, 2, L]`` int64 zeros: the unknown samples' shape (no real token)."""
    return torch.zeros(n, *shape, dtype=torch.long)


def sentences(model: TextModel, recon: torch.Tensor, truth: torch.Tensor | None) -> str:
    """The reconstruction as text, one sentence per line, each under its original when known."""
    tok = model.tokenizer
    lines: list[str] = []
    for i in range(recon.shape[0]):
        if truth is not None:
            lines.append(f"original:       {tok.decode(truth[i])}")
        lines.append(f"reconstruction: {tok.decode(recon[i])}")
    return "\n".join(lines) + "\n"


def text_model_of(model_fn: Callable[[], nn.Module]) -> TextModel | None:
    """``model_fn()`` (built without moving the app's random state) when it is a text model."""
    with private_rng():
        net = model_fn()
    return net if is_text_model(net) else None
