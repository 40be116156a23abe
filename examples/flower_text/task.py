"""The example's model and data: the tiny GPT-2 with LoRA adapters, fine-tuned on sentences that
carry personal data (names, account numbers, dates), one sentence per client per round.

Everything a Flower LLM app usually has in its ``task.py``. gradleak appears only as the source of
the model (``gpt2-tiny`` through :func:`gradleak.models.hf.build_text_model`, i.e. a Hugging Face
GPT-2 with ``peft`` LoRA adapters on ``c_attn``) and of the offline data
(``data.dataset=personal``). Like most Flower LLM apps, the clients send only what they train: the
adapters' arrays (``get_peft_model_state_dict`` in FlowerTune; here the ``requires_grad`` tensors).

``EXAMPLE_LM=DIR`` starts from a ``gradleak train-lm`` model directory instead of a seeded
random GPT-2; ``EXAMPLE_CLIENTS`` sets the number of clients (default 3).
"""

from __future__ import annotations

import copy
import functools
import os

import torch
import torch.nn.functional as F

from gradleak.config import load_config
from gradleak.data import build_dataset
from gradleak.models.hf import build_text_model
from gradleak.models.text import IGNORE_INDEX, TextModel
from gradleak.models.train_lm import perplexity

NUM_CLIENTS = int(os.environ.get("EXAMPLE_CLIENTS", "3"))
MAX_LENGTH = 12  # tokens per sentence (longer ones are truncated, as a real client's collator does)
LORA_RANK = 16
BATCH = 1  # sentences per client update: one SGD step on one fresh sentence each round (FedSGD)
LR = 0.05
MODEL = [  # a small GPT-2 (2 layers, width 64) so that the example runs in about a minute on a CPU
    "model.name=gpt2-tiny", "model.hidden_size=64", "model.layers=2", "model.heads=2",
    f"model.lora_rank={LORA_RANK}", "model.lora_alpha=32",
    *([f"model.path={os.environ['EXAMPLE_LM']}"] if os.environ.get("EXAMPLE_LM") else []),
]


@functools.cache
def _base() -> TextModel:
    cfg = load_config(None, [*MODEL, "data.dataset=personal"])
    return build_text_model(cfg.model, num_classes=1, seed=0)


def model_fn() -> TextModel:
    """The global model (base weights from seed 0, or ``EXAMPLE_LM``) with its LoRA adapters."""
    return copy.deepcopy(_base())


def trainable_state(net: TextModel) -> dict[str, torch.Tensor]:
    """What a client sends: the tensors it trains (the LoRA adapters), detached."""
    return {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}


@functools.cache
def sentences(split: str = "train"):
    """The ``personal`` sentences of ``split`` (train: the clients', test: held out)."""
    cfg = load_config(None, ["data.dataset=personal", f"data.split={split}"])
    return build_dataset(cfg.data)


def public_texts(count: int = 32) -> list[str]:
    """Sentences the server may hold of the clients' kind (held-out test split, never a client's):
    the leak criterion's update-free guesses."""
    return list(sentences("test").texts[:count])


def partition(client: int) -> list[int]:
    """Client ``client``'s train indices (an IID split: every ``NUM_CLIENTS``-th sentence)."""
    return list(range(client, len(sentences()), NUM_CLIENTS))


def round_batch(client: int, server_round: int) -> torch.Tensor:
    """The ``[BATCH, 2, MAX_LENGTH]`` token batch client ``client`` trains on in ``server_round``."""
    part = partition(client)
    gen = torch.Generator().manual_seed(1000 * server_round + client)
    pick = torch.randperm(len(part), generator=gen)[:BATCH].tolist()
    data = sentences().tokenized(_base().tokenizer, MAX_LENGTH)
    return data.tensors([part[i] for i in pick])[0]


def train_step(net: TextModel, x: torch.Tensor) -> float:
    """One SGD step of next-token prediction on batch ``x``; the loss before the step."""
    net.train()
    loss = F.cross_entropy(net(x), net.targets(x, None), ignore_index=IGNORE_INDEX)
    net.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p -= LR * p.grad
    return float(loss.detach())


def held_out_perplexity(net: TextModel) -> float:
    """Perplexity of the global model on the held-out sentences (the utility a defense costs)."""
    value, _ = perplexity(net, list(sentences("test").texts), MAX_LENGTH)
    return float("nan") if value is None else value
