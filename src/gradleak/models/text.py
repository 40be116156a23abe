"""Text models in the one pipeline: a Hugging Face model and its tokenizer behind the image
models' interface.

A text batch is one ``int64`` tensor ``[N, 2, L]``: ``x[:, 0]`` the token ids, ``x[:, 1]`` the
attention mask (1 = real token, 0 = padding). Keeping both in one tensor lets the clients, DP-SGD
and the defenses treat text exactly as images (``x[batch]`` selects samples) and never confuses a
padding id with a real token.

:class:`TextModel` maps ``[N, 2, L]`` to logits that ``F.cross_entropy`` takes with the labels of
:meth:`TextModel.targets`:

* ``task="classification"``: logits ``[N, C]``, targets the class labels ``[N]``;
* ``task="causal_lm"``: next-token logits ``[N, V, L - 1]``, targets ``[N, L - 1]`` (the ids
  shifted by one, ``-100`` at padding: the mean over real tokens, as Hugging Face's own loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from gradleak.errors import GradleakError

TASKS = ("classification", "causal_lm")
IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: padding and the position after EOS


@dataclass
class TextTokenizer:
    """The model's own tokenizer (a ``transformers`` fast tokenizer) and how the client encodes.

    ``append_eos``: causal LMs train on ``text + EOS`` (as instruction fine-tuning does); the text
    is cut to ``L - 1`` tokens so that EOS always ends it. Encoders use the tokenizer's own special
    tokens (``[CLS] ... [SEP]``).
    """

    hf: Any  # transformers.PreTrainedTokenizerBase
    append_eos: bool = False

    @property
    def pad_id(self) -> int:
        pad = self.hf.pad_token_id
        return int(pad if pad is not None else (self.hf.eos_token_id or 0))

    @property
    def eos_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in self.hf.all_special_ids)

    def encode(self, texts: list[str], *, max_length: int) -> torch.Tensor:
        """``texts`` as ``[n, 2, max_length]`` (ids, attention mask), right-padded."""
        if max_length < 2:
            raise GradleakError(f"bad value {max_length} for data.max_length: at least 2 tokens")
        rows = []
        for text in texts:
            if self.append_eos:
                if self.eos_id is None:
                    raise GradleakError("a causal LM's tokenizer needs an EOS token (eos_token in "
                                        "tokenizer_config.json)")
                ids = self.hf(text, add_special_tokens=False)["input_ids"][: max_length - 1]
                ids = [*ids, int(self.eos_id)]
            else:
                ids = self.hf(text, truncation=True, max_length=max_length)["input_ids"]
            rows.append(ids)
        out = torch.full((len(rows), 2, max_length), self.pad_id, dtype=torch.long)
        out[:, 1] = 0
        for i, ids in enumerate(rows):
            out[i, 0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            out[i, 1, : len(ids)] = 1
        return out

    def token_ids(self, x: torch.Tensor, *, special: bool = False) -> list[int]:
        """The real (unmasked) ids of one encoded sequence ``[2, L]`` (or ids ``[L]``, all real),
        without the special tokens unless ``special``."""
        ids = x[0][x[1].bool()] if x.ndim == 2 else x
        drop = set() if special else self.special_ids
        return [int(i) for i in ids.tolist() if int(i) not in drop]

    def decode(self, x: torch.Tensor) -> str:
        """One encoded sequence ``[2, L]`` (or ids ``[L]``) as text, special tokens dropped."""
        # The tokenizer's own clean-up setting: WordPiece joins " ." back, BPE must not.
        return self.hf.decode(self.token_ids(x), skip_special_tokens=True).strip()

    def tokens(self, x: torch.Tensor) -> list[str]:
        """The token strings of one encoded sequence, special tokens dropped."""
        return self.hf.convert_ids_to_tokens(self.token_ids(x))


class TextModel(nn.Module):
    """A Hugging Face model on ``[N, 2, L]`` text batches (see the module docstring).

    ``hf``: a ``*ForSequenceClassification`` (task ``classification``) or ``*ForCausalLM`` /
    ``*LMHeadModel`` (task ``causal_lm``) module; ``tokenizer``: its :class:`TextTokenizer`;
    ``source``: where it came from (recorded in results).
    """

    modality = "text"

    def __init__(self, hf: nn.Module, tokenizer: TextTokenizer,
                 task: Literal["classification", "causal_lm"], *, source: str = "") -> None:
        super().__init__()
        if task not in TASKS:
            raise GradleakError(f"bad value {task!r} for model.task; allowed: auto, {', '.join(TASKS)}")
        self.hf, self.tokenizer, self.task, self.source = hf, tokenizer, task, source

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def max_positions(self) -> int | None:
        c = self.hf.config
        return getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)

    @property
    def hidden_size(self) -> int:
        c = self.hf.config
        return int(getattr(c, "hidden_size", None) or c.n_embd)

    @property
    def num_classes(self) -> int:
        """Classes of a classifier; the vocabulary size of a causal LM."""
        if self.task == "classification":
            return int(self.hf.config.num_labels)
        return int(self.hf.get_output_embeddings().weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_text_batch(x)
        ids, mask = x[:, 0], x[:, 1]
        logits = self.hf(input_ids=ids, attention_mask=mask).logits
        if self.task == "classification":
            return logits
        return logits[:, :-1].transpose(1, 2)  # [N, V, L-1]: class dim second for cross_entropy

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss targets of batch ``x``: the class ``labels`` [N], or for a causal LM the next
        tokens ``[N, L - 1]`` with ``-100`` where the next position is padding."""
        if self.task == "classification":
            return labels
        nxt = x[:, 0, 1:].clone()
        nxt[x[:, 1, 1:] == 0] = IGNORE_INDEX
        return nxt


def check_text_batch(x: torch.Tensor) -> None:
    """One-line error unless ``x`` is an ``[N, 2, L]`` integer text batch."""
    if x.ndim != 3 or x.shape[1] != 2 or x.is_floating_point():
        raise GradleakError(f"a text batch is int64 [N, 2, L] (ids, attention mask); got "
                            f"{x.dtype} {tuple(x.shape)}")


def is_text_model(model: nn.Module) -> bool:
    return getattr(model, "modality", None) == "text"


class TextTargets:
    """A tokenized text dataset whose ``tensors`` give the model's loss targets
    (:meth:`TextModel.targets`: class labels, or a causal LM's next tokens) instead of the class
    labels, so that federated training and evaluation treat it like an image dataset."""

    modality = "text"

    def __init__(self, dataset: Any, model: TextModel) -> None:
        self.dataset, self.model = dataset, model
        self.name, self.num_classes = dataset.name, dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, key: str) -> Any:  # classes, max_length, texts, ...: the dataset's
        if key == "dataset":
            raise AttributeError(key)
        return getattr(self.dataset, key)

    def targets(self) -> list[int]:
        return self.dataset.targets()

    def tensors(self, indices: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = self.dataset.tensors(indices)
        return x, self.model.targets(x, labels)
