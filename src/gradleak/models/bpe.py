"""The WordNet byte-level BPE tokenizer of ``gpt2-tiny``, trained offline and cached.

``gpt2-tiny`` needs a vocabulary without a download: a byte-level BPE (GPT-2's scheme, Radford
et al. 2019) is trained on the glosses and example sentences of Princeton WordNet 3.0 (the text
after ``| `` on each synset line of ``data.noun/verb/adj/adv``; Debian's ``wordnet-base``). The
trainer is deterministic (the same files and size give the same vocabulary and merges), takes a
few seconds, and its result is cached in
``$GRADLEAK_HOME/tokenizers/wordnet-bpe-<vocab>-<hash of the files' sizes and mtimes>/``
(default ``~/.cache/gradleak``), written atomically and reused by later processes.

Special tokens: ``<|endoftext|>`` (id 0, BOS and EOS, as GPT-2) and ``<|pad|>`` (id 1).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_ENV = "GRADLEAK_WORDNET"  # another folder holding the data.* files
POS_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
EOS = "<|endoftext|>"
PAD = "<|pad|>"
HOME_ENV = "GRADLEAK_HOME"
INSTALL_HINT = "apt-get install wordnet-base"
_TOKENIZER_FILE = "tokenizer.json"


def wordnet_dir() -> Path:
    """The folder of the WordNet 3.0 ``data.*`` files: ``$GRADLEAK_WORDNET`` or
    ``/usr/share/wordnet``."""
    return Path(os.environ.get(WORDNET_ENV) or WORDNET_DIR).expanduser()


def wordnet_files(root: Path | None = None) -> list[Path]:
    """The four ``data.<pos>`` files; one line naming the install command when one is missing."""
    root = root or wordnet_dir()
    files = [root / name for name in POS_FILES]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise GradleakError(f"WordNet 3.0 is not installed ({', '.join(missing)} missing in "
                            f"{root}): {INSTALL_HINT}, or set ${WORDNET_ENV} to its folder")
    return files


def wordnet_glosses(root: Path | None = None) -> list[str]:
    """Every synset's gloss text (definition; quoted examples), in file order."""
    out = []
    for path in wordnet_files(root):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):  # the Princeton license header
                    continue
                _, sep, gloss = line.partition(" | ")
                if sep and gloss.strip():
                    out.append(gloss.strip())
    return out


def cache_root() -> Path:
    """``$GRADLEAK_HOME/tokenizers``, else ``$XDG_CACHE_HOME/gradleak/tokenizers``, else
    ``~/.cache/gradleak/tokenizers`` (as the LPIPS cache)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser() / "tokenizers"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "gradleak" / "tokenizers"


def _files_hash(files: list[Path]) -> str:
    # Sizes and mtimes identify an installed copy without reading 22 MB on every start.
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:10]


def train_wordnet_bpe(vocab_size: int, root: Path | None = None) -> Any:
    """A fresh ``tokenizers.Tokenizer`` (byte-level BPE, ``vocab_size`` entries) trained on
    :func:`wordnet_glosses`; no cache."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = wordnet_glosses(root)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def _check_vocab_size(vocab_size: int) -> None:
    # 256 byte symbols + the two special tokens must fit; beyond 2^16 the corpus runs out of merges.
    if not isinstance(vocab_size, int) or not 258 <= vocab_size <= 65_536:
        raise GradleakError(f"bad value {vocab_size!r} for the BPE vocabulary size: an integer in "
                            "[258, 65536] (256 bytes + 2 special tokens at least)")


def wordnet_bpe_dir(vocab_size: int = 8192) -> Path:
    """The cache folder of the trained tokenizer (``tokenizer.json``), training it first when it
    is not there yet."""
    _check_vocab_size(vocab_size)
    files = wordnet_files()
    target = cache_root() / f"wordnet-bpe-{vocab_size}-{_files_hash(files)}"
    if (target / _TOKENIZER_FILE).is_file():
        return target
    tok = train_wordnet_bpe(vocab_size, files[0].parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok.save(str(tmp / _TOKENIZER_FILE))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders; a cache is meant to be shared
        try:
            os.replace(tmp, target)
        except OSError:  # another process got there first: its copy is the same tokenizer
            if not (target / _TOKENIZER_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.cache
def _load(path: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def wordnet_bpe(vocab_size: int = 8192) -> Any:
    """The WordNet byte-level BPE as a ``transformers`` fast tokenizer (``eos``/``bos``
    ``<|endoftext|>``, ``pad`` ``<|pad|>``); trained once, then read from the cache."""
    from transformers import PreTrainedTokenizerFast

    path = wordnet_bpe_dir(vocab_size) / _TOKENIZER_FILE
    try:
        backend = _load(str(path))
    except Exception as exc:  # a truncated or foreign file in the cache
        raise GradleakError(f"cannot read the cached tokenizer {str(path)!r} ({exc}); delete "
                            "its folder to retrain it") from None
    # A fresh wrapper each call: callers may add tokens or change settings on theirs.
    return PreTrainedTokenizerFast(tokenizer_object=backend.__class__.from_str(backend.to_str()),
                                   bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=1024, padding_side="right",
                                   clean_up_tokenization_spaces=False)
