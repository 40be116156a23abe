"""Text datasets: WordNet glosses and examples, the personal-data templates, the user's own
.txt/.jsonl/.csv files, the hash split, and sentences through a real tokenizer."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from gradleak.cli import main
from gradleak.config import load_config
from gradleak.data import DATASETS, TextDataset, build_dataset
from gradleak.data import personal as personal_mod
from gradleak.data.text import split_texts
from gradleak.data.wordnet import LEXNAMES, wordnet_corpus
from gradleak.errors import GradleakError

WORDNET = Path("/usr/share/wordnet")
needs_wordnet = pytest.mark.skipif(not (WORDNET / "data.noun").is_file(),
                                   reason="Debian's wordnet-base is not installed")

# Known synsets of WordNet 3.0 (grep /usr/share/wordnet/data.*): 02084071 dog (05 noun.animal)
# and 00002724 choke (29 verb.body), each gloss a definition then quoted examples.
DOG_GLOSS = ("a member of the genus Canis (probably descended from the common wolf) that has been "
             "domesticated by man since prehistoric times; occurs in many breeds")
DOG_EXAMPLE = "the dog barked all night"
CHOKE_GLOSS = "breathe with great difficulty, as when experiencing a strong emotion"
CHOKE_EXAMPLE = "She choked with emotion when she spoke about her deceased husband"


def _data(*overrides: str):
    return load_config(None, list(overrides)).data


def _build(*overrides: str) -> TextDataset:
    ds = build_dataset(_data(*overrides))
    assert isinstance(ds, TextDataset)
    return ds


def _error(*overrides: str) -> str:
    with pytest.raises(GradleakError) as info:
        build_dataset(_data(*overrides))
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


def _by_text(*parts: TextDataset) -> dict[str, str]:
    """text -> class name over the given splits (texts unique within and across them)."""
    out: dict[str, str] = {}
    for ds in parts:
        assert len(set(ds.texts)) == len(ds.texts), f"{ds.name}: a sentence twice in one split"
        for text, label in zip(ds.texts, ds.labels, strict=True):
            assert text not in out, f"{text!r} in both splits"
            out[text] = ds.classes[label]
    return out


def test_text_datasets_are_registered():
    for name in ("wordnet", "wordnet-examples", "personal", "text"):
        assert name in DATASETS


# --- the split -----------------------------------------------------------------------------


def test_split_texts_drops_duplicates_keeps_the_first_and_ignores_order():
    texts = [f"sentence number {i}" for i in range(300)]
    labels = [i % 7 for i in range(300)]
    critical = [[str(i)] for i in range(300)]
    dup_texts = [*texts, texts[3], texts[10]]
    dup_labels = [*labels, 99, 98]  # later duplicates: dropped, their labels never seen
    parts = {s: split_texts(dup_texts, dup_labels, [*critical, ["x"], ["y"]], split=s,
                            holdout=0.25) for s in ("train", "test")}
    train, test = parts["train"], parts["test"]
    assert set(train["texts"]).isdisjoint(test["texts"])
    assert sorted(train["texts"] + test["texts"]) == sorted(texts)
    assert 0.15 < len(test["texts"]) / 300 < 0.35
    for part in (train, test):
        for t, y, c in zip(part["texts"], part["labels"], part["critical"], strict=True):
            i = texts.index(t)
            assert (y, c) == (labels[i], critical[i])
        assert part["texts"] == sorted(part["texts"], key=texts.index)  # order kept
    assert "25%" in test["split_note"] and test["split_note"].startswith("test")

    order = list(range(300))
    random.Random(5).shuffle(order)
    for s in ("train", "test"):
        shuffled = split_texts([texts[i] for i in order], [labels[i] for i in order], None,
                               split=s, holdout=0.25)
        assert set(shuffled["texts"]) == set(parts[s]["texts"])
        assert shuffled["critical"] is None
    # A bigger holdout only moves sentences from train to test.
    bigger = split_texts(texts, labels, None, split="test", holdout=0.5)["texts"]
    assert set(test["texts"]) < set(bigger)


@pytest.mark.parametrize("holdout", [0.0, 1.0, -0.1, 1.5])
def test_split_texts_rejects_a_holdout_outside_0_1(holdout):
    with pytest.raises(GradleakError, match="data.holdout"):
        split_texts(["a b"], [0], None, split="train", holdout=holdout)


# --- wordnet -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordnet_splits() -> tuple[TextDataset, TextDataset]:
    if not (WORDNET / "data.noun").is_file():
        pytest.skip("Debian's wordnet-base is not installed")
    return _build("data.dataset=wordnet"), _build("data.dataset=wordnet", "data.split=test")


@pytest.fixture(scope="module")
def example_splits() -> tuple[TextDataset, TextDataset]:
    if not (WORDNET / "data.noun").is_file():
        pytest.skip("Debian's wordnet-base is not installed")
    return (_build("data.dataset=wordnet-examples"),
            _build("data.dataset=wordnet-examples", "data.split=test"))


@needs_wordnet
def test_wordnet_has_the_45_lexicographer_files(wordnet_splits):
    train, test = wordnet_splits
    for ds in (train, test):
        assert ds.num_classes == len(ds.classes) == 45
        assert len(set(ds.classes)) == 45
        assert all(re.fullmatch(r"(noun|verb|adj|adv)\.[A-Za-z]+", c) for c in ds.classes)
        # lexnames(5WN): the class index is lex_filenum.
        assert ds.classes[0] == "adj.all" and ds.classes[3] == "noun.Tops"
        assert ds.classes[5] == "noun.animal" and ds.classes[29] == "verb.body"
        assert ds.classes[43] == "verb.weather" and ds.classes[44] == "adj.ppl"
        assert ds.modality == "text" and ds.critical is None
    assert set(train.labels) == set(range(45))  # every lexicographer file has glosses


@needs_wordnet
def test_wordnet_known_glosses_carry_their_lexname(wordnet_splits):
    by_text = _by_text(*wordnet_splits)
    assert by_text[DOG_GLOSS] == "noun.animal"
    assert by_text[CHOKE_GLOSS] == "verb.body"
    assert by_text["a young dog"] == "noun.animal"
    # The definition only: the quoted examples are not part of the gloss text.
    assert not any(DOG_EXAMPLE in t for t in by_text)
    assert all(t == t.strip() and t and not t.endswith(";") for t in by_text)


@needs_wordnet
def test_wordnet_splits_are_disjoint_and_cover_the_deduplicated_corpus(wordnet_splits):
    train, test = wordnet_splits
    pairs = wordnet_corpus(part="glosses")
    assert len(pairs) == 117659  # the synsets of WordNet 3.0
    first: dict[str, int] = {}
    for text, lex in pairs:
        first.setdefault(text, lex)
    by_text = _by_text(train, test)  # also: disjoint, no duplicates
    assert set(by_text) == set(first)
    assert all(by_text[t] == LEXNAMES[first[t]] for t in by_text)
    assert 0.18 < len(test) / len(first) < 0.22
    assert train.split_note.startswith("train") and test.split_note.startswith("test")


@needs_wordnet
def test_wordnet_split_does_not_depend_on_the_seed_or_a_holdout_of_another_dataset(
        wordnet_splits):
    _, test = wordnet_splits
    again = _build("seed=12345", "data.dataset=wordnet", "data.split=test")
    assert again.texts == test.texts and again.labels == test.labels


@needs_wordnet
def test_wordnet_examples_are_the_quoted_examples(example_splits, wordnet_splits):
    by_text = _by_text(*example_splits)
    assert by_text[DOG_EXAMPLE] == "noun.animal"
    assert by_text[CHOKE_EXAMPLE] == "verb.body"
    assert example_splits[0].classes == LEXNAMES
    assert all('"' not in t and len(t.split()) > 1 for t in by_text)
    assert DOG_GLOSS not in by_text
    assert 40_000 < len(by_text) < len(_by_text(*wordnet_splits))


def _fake_wordnet(root: Path) -> Path:
    header = "  1 This software and database is being provided to you, the LICENSEE  \n"
    lines = {
        "data.noun": ['00000001 05 n 01 dog 0 000 | a domesticated canine; "the dog barked all '
                      'night"; "a dog\'s life"  ',
                      "00000002 13 n 01 bread 0 000 | food made from dough  ",
                      "00000003 06 n 01 loaf 0 000 | food made from dough  "],
        "data.verb": ['00000004 29 v 01 choke 0 000 | breathe with difficulty; "She choked with '
                      'emotion"; "oh"  '],
        "data.adj": ['00000005 00 a 01 big 0 000 | above average in size; "a big house"  '],
        "data.adv": ["00000006 02 r 01 fast 0 000 | quickly  "],
    }
    root.mkdir()
    for name, rows in lines.items():
        (root / name).write_text(header * 3 + "".join(r + "\n" for r in rows))
    return root


def test_wordnet_parses_definitions_and_examples_of_every_file(tmp_path):
    root = str(_fake_wordnet(tmp_path / "wn"))
    assert wordnet_corpus(root, part="glosses") == [
        ("a domesticated canine", 5), ("food made from dough", 13), ("food made from dough", 6),
        ("breathe with difficulty", 29), ("above average in size", 0), ("quickly", 2)]
    # One-word quotes ("oh") are dropped.
    assert wordnet_corpus(root, part="examples") == [
        ("the dog barked all night", 5), ("a dog's life", 5), ("She choked with emotion", 29),
        ("a big house", 0)]


def test_wordnet_missing_names_the_folder(tmp_path):
    msg = _error("data.dataset=wordnet", f"data.root={tmp_path / 'nowhere'}")
    assert str(tmp_path / "nowhere") in msg and "wordnet-base" in msg


# --- personal ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def personal_splits() -> tuple[TextDataset, TextDataset]:
    return _build("data.dataset=personal"), _build("data.dataset=personal", "data.split=test")


def _template_regex(template: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{\w+\\\}", "(.+?)", re.escape(template)))


def test_personal_is_deterministic_whatever_the_global_rng(personal_splits):
    train, test = personal_splits
    random.seed(1)
    torch.manual_seed(1)
    a = _build("data.dataset=personal", "seed=3")
    random.seed(2)
    torch.manual_seed(2)
    b = _build("data.dataset=personal", "seed=4")
    for ds in (a, b):
        assert (ds.texts, ds.labels, ds.critical) == (train.texts, train.labels, train.critical)
    assert personal_mod.personal_corpus() == personal_mod.personal_corpus()
    assert len(train) + len(test) == len(set(personal_mod.personal_corpus()[0]))
    assert len(set(personal_mod.personal_corpus()[0])) > 1900  # few template collisions


def test_personal_critical_strings_are_substrings_and_labels_name_the_template(personal_splits):
    classes = tuple(name for name, _, _ in personal_mod.TEMPLATES)
    regex = {name: _template_regex(t) for name, t, _ in personal_mod.TEMPLATES}
    names = set(personal_mod.FIRST) | set(personal_mod.LAST)
    by_text = _by_text(*personal_splits)  # disjoint splits
    assert set(by_text) == set(personal_mod.personal_corpus()[0])
    for ds in personal_splits:
        assert ds.classes == classes and ds.num_classes == 12
        assert len(ds.critical) == len(ds)
        for i, (text, label) in enumerate(zip(ds.texts, ds.labels, strict=True)):
            crit = ds.critical_of(i)
            assert crit, text
            assert all(c and c in text for c in crit), (text, crit)
            assert len(set(crit)) == len(crit)
            assert regex[ds.classes[label]].fullmatch(text), (text, ds.classes[label])
            assert any(c in names for c in crit), text
            assert any(ch.isdigit() for c in crit for ch in c), text
        assert set(ds.labels) == set(range(12))


# --- the user's files ----------------------------------------------------------------------


def _both(path: Path, *overrides: str) -> tuple[TextDataset, TextDataset]:
    return (_build("data.dataset=text", f"data.root={path}", *overrides),
            _build("data.dataset=text", f"data.root={path}", "data.split=test", *overrides))


SENTENCES = [f"This is sentence {i}, about the number {i * 7}." for i in range(40)]


def test_txt_one_sentence_per_line_blank_lines_dropped_one_class(tmp_path):
    path = tmp_path / "mine.txt"
    lines = [f"  {s}\t" if i % 3 == 0 else s for i, s in enumerate(SENTENCES)]
    path.write_text("\n\n" + "\n   \n".join(lines) + "\n" + SENTENCES[0] + "\n\n")
    train, test = _both(path)
    by_text = _by_text(train, test)
    assert set(by_text) == set(SENTENCES)  # stripped, blank lines and the duplicate dropped
    assert len(test) > 0 and len(train) > len(test)
    for ds in (train, test):
        assert ds.num_classes == 1 and set(ds.labels) == {0}
        assert ds.name == "text:mine.txt" and ds.critical is None
    # The split is by text alone: another order of the lines gives the same parts.
    path.write_text("\r\n".join(reversed(SENTENCES)) + "\r\n")
    again = _both(path)
    assert [set(d.texts) for d in again] == [set(train.texts), set(test.texts)]


def test_jsonl_labels_become_sorted_classes(tmp_path):
    rows = [{"text": s, "label": ["pos", "neg", 3][i % 3], "extra": i}
            for i, s in enumerate(SENTENCES)]
    rows.insert(5, {"text": "   ", "label": "ignored"})  # no text: skipped
    rows.insert(7, {"text": "Ünïcødé — “quotes” and a line\u2028separator", "label": "pos"})
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n",
                    encoding="utf-8")
    train, test = _both(path)
    assert train.classes == test.classes == ("3", "neg", "pos")  # a row without text: no class
    expected = {r["text"].strip(): str(r["label"]) for r in rows if r["text"].strip()}
    assert _by_text(train, test) == expected


def test_jsonl_with_a_test_file_and_other_columns(tmp_path):
    root, test_root = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    root.write_text("".join(json.dumps({"sentence": s, "y": i % 2}) + "\n"
                            for i, s in enumerate(SENTENCES[:10])))
    test_root.write_text(json.dumps({"sentence": "held out", "y": 7}) + "\n")
    opts = ("data.text_column=sentence", "data.label_column=y", f"data.test_root={test_root}")
    train, test = _both(root, *opts)
    assert train.classes == test.classes == ("0", "1", "7")  # both files' labels
    assert train.texts == SENTENCES[:10]  # the whole file, in order
    assert [train.classes[y] for y in train.labels] == [str(i % 2) for i in range(10)]
    assert test.texts == ["held out"] and test.classes[test.labels[0]] == "7"
    assert test.split_note == "test: data.test_root"
    # No label column (absent, or data.label_column=null): one class.
    one = _build("data.dataset=text", f"data.root={root}", "data.text_column=sentence",
                 "data.label_column=null", f"data.test_root={test_root}")
    assert one.num_classes == 1 and set(one.labels) == {0}
    absent = _build("data.dataset=text", f"data.root={root}", "data.text_column=sentence",
                    f"data.test_root={test_root}")
    assert absent.num_classes == 1


def test_csv_with_header_quoted_fields_and_optional_label(tmp_path):
    path = tmp_path / "mine.csv"
    body = "".join(f'"{s}",{"ab"[i % 2]}\n' for i, s in enumerate(SENTENCES))
    quoted = '"Hello, ""world""",a\n"line one\nline two",b\n,a\n'
    path.write_text("\ufefftext,label\n" + quoted + body, encoding="utf-8")  # Excel's BOM
    train, test = _both(path)
    assert train.classes == ("a", "b")
    expected = {s: "ab"[i % 2] for i, s in enumerate(SENTENCES)}
    expected |= {'Hello, "world"': "a", "line one\nline two": "b"}
    assert _by_text(train, test) == expected
    no_label = tmp_path / "plain.csv"
    no_label.write_text("id,text\n" + "".join(f'{i},"{s}"\n' for i, s in enumerate(SENTENCES)))
    train, test = _both(no_label)
    assert train.num_classes == 1 and set(_by_text(train, test)) == set(SENTENCES)


@pytest.mark.parametrize("name, content, overrides, fragments", [
    ("empty.txt", b"\n  \n\n", (), ("holds no text",)),
    ("empty.jsonl", b"", (), ("holds no text",)),
    ("header.csv", b"text,label\n", (), ("holds no text",)),
    ("cols.jsonl", b'{"sentence": "a b"}\n', (), ("no column 'text'", "data.text_column",
                                                 "sentence")),
    ("cols.csv", b"sentence,label\na b,x\n", (), ("no column 'text'", "sentence")),
    ("custom.csv", b"text\na b\n", ("data.text_column=body",), ("no column 'body'",)),
    ("bad.jsonl", b'{"text": "a b"}\n{"text": "c d",\n', (), ("line 2 is not JSON",)),
    ("list.jsonl", b'["a b"]\n', (), ("line 1 is not a JSON object",)),
    ("latin1.txt", "caf\u00e9 cr\u00e8me\n".encode("latin-1"), (), ("not UTF-8", "0xe9")),
    ("latin1.csv", "text\ncaf\u00e9\n".encode("latin-1"), (), ("not UTF-8",)),
    ("mine.tsv", b"text\ta\n", (), ("unsupported file type '.tsv'", ".jsonl")),
])
def test_bad_user_files_raise_one_line_naming_the_file(tmp_path, name, content, overrides,
                                                       fragments):
    path = tmp_path / name
    path.write_bytes(content)
    msg = _error("data.dataset=text", f"data.root={path}", *overrides)
    assert f"data.root={path}" in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_missing_files_and_a_bad_test_file_are_named(tmp_path):
    assert "needs data.root" in _error("data.dataset=text")
    missing = tmp_path / "missing.txt"
    assert f"data.root={missing}: file does not exist" in _error("data.dataset=text",
                                                                 f"data.root={missing}")
    good = tmp_path / "good.txt"
    good.write_text("\n".join(SENTENCES))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    msg = _error("data.dataset=text", f"data.root={good}", f"data.test_root={bad}")
    assert f"data.test_root={bad}: line 1 is not JSON" in msg
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    msg = _error("data.dataset=text", f"data.root={good}", f"data.test_root={empty}",
                 "data.split=test")
    assert f"data.test_root={empty}" in msg and "no text" in msg


def test_a_split_without_sentences_is_one_line(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("just one sentence here\n")
    held = "test" if split_texts(["just one sentence here"], [0], None, split="test",
                                 holdout=0.2)["texts"] else "train"
    empty_split = "train" if held == "test" else "test"
    msg = _error("data.dataset=text", f"data.root={path}", f"data.split={empty_split}")
    assert f"no sentence falls in the {empty_split} split" in msg and "data.test_root" in msg


@pytest.mark.parametrize("name, content, fragment", [
    ("EMPTY.txt", b"\n\n", "the file holds no text"),
    ("latin1.txt", b"caf\xe9\n", "not UTF-8"),
])
def test_cli_exits_2_with_one_line_for_a_bad_text_file(tmp_path, capsys, name, content,
                                                        fragment):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out"
    code = main(["attack", "--out", str(out), "data.dataset=text", f"data.root={path}",
                 "model.name=gpt2-tiny", "model.hidden_size=32", "model.layers=2",
                 "model.heads=2", "data.max_length=8", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and fragment in err


# --- through a tokenizer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from gradleak.metrics.semantic import minilm_dir
    from gradleak.models.text import TextTokenizer

    folder = minilm_dir()
    if folder is None:
        pytest.skip("the all-MiniLM-L6-v2 package is not installed")
    transformers = pytest.importorskip("transformers")
    return TextTokenizer(transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True))


def test_tokenized_tensors_ids_mask_and_padding(minilm, personal_splits):
    train = personal_splits[0]
    hf = minilm.hf
    for length in (64, 12):
        tok = train.tokenized(minilm, length)
        assert tok.sequence_length == length and len(tok) == len(train)
        assert tok.classes == train.classes and tok.targets() == train.labels
        idx = [0, 5, 17, 3, 5]
        x, y = tok.tensors(idx)
        assert x.dtype == torch.int64 and x.shape == (5, 2, length)
        assert y.dtype == torch.int64 and y.tolist() == [train.labels[i] for i in idx]
        ids, mask = x[:, 0], x[:, 1]
        assert set(mask.unique().tolist()) <= {0, 1}
        truncated = 0
        for row, i in enumerate(idx):
            want = hf(train.texts[i])["input_ids"]
            n = int(mask[row].sum())
            assert mask[row, :n].eq(1).all() and mask[row, n:].eq(0).all()  # right padding
            assert ids[row, n:].eq(hf.pad_token_id).all()
            assert ids[row, 0] == hf.cls_token_id and ids[row, n - 1] == hf.sep_token_id
            if len(want) <= length:
                assert ids[row, :n].tolist() == want
            else:
                truncated += 1
                assert n == length and ids[row, :n - 1].tolist() == want[:length - 1]
            assert tok.text_of(i) == train.texts[i]
            assert tok.critical_of(i) == train.critical_of(i)
            item, label = tok[i]
            assert torch.equal(item, x[row]) and label == train.labels[i]
        assert (truncated > 0) == (length == 12)


def test_tokenized_bounds_and_max_length_limits(minilm):
    ds = TextDataset("tiny", ["one two", "three four five"], [0, 1], ("a", "b"))
    tok = ds.tokenized(minilm, 8)
    x, y = tok.tensors()
    assert x.shape == (2, 2, 8) and y.tolist() == [0, 1]
    for bad in ([2], [-1]):
        with pytest.raises(IndexError):
            tok.tensors(bad)
    assert minilm.hf.model_max_length == 512
    assert ds.tokenized(minilm, 512).tensors([0])[0].shape == (1, 2, 512)
    with pytest.raises(GradleakError) as info:
        ds.tokenized(minilm, 513)
    msg = str(info.value)
    assert "data.max_length" in msg and "512" in msg and "\n" not in msg
    for short in (1, 0):
        with pytest.raises(GradleakError, match="data.max_length"):
            ds.tokenized(minilm, short).tensors([0])
    with pytest.raises(GradleakError, match="data.max_length"):
        _data("data.max_length=1")


def test_causal_tokenizer_always_ends_with_eos():
    pytest.importorskip("tokenizers")
    if not (WORDNET / "data.noun").is_file():
        pytest.skip("Debian's wordnet-base is not installed")
    from gradleak.models.bpe import wordnet_bpe
    from gradleak.models.text import TextTokenizer

    tok = TextTokenizer(wordnet_bpe(8192), append_eos=True)
    eos, pad = tok.eos_id, tok.pad_id
    assert eos is not None and pad != eos
    texts = ["a young dog", DOG_GLOSS]
    ds = TextDataset("causal", texts, [0, 0], ("x",))
    for length in (6, 48):
        x, _ = ds.tokenized(tok, length).tensors()
        for row, text in enumerate(texts):
            plain = tok.hf(text, add_special_tokens=False)["input_ids"]
            n = int(x[row, 1].sum())
            assert n == min(len(plain), length - 1) + 1
            assert x[row, 0, :n].tolist() == [*plain[:length - 1], eos]
            assert x[row, 1, :n].eq(1).all() and x[row, 1, n:].eq(0).all()
            assert x[row, 0, n:].eq(pad).all()
            assert x[row, 0, :n - 1].ne(eos).all()
    assert tok.decode(ds.tokenized(tok, 48).tensors([0])[0][0]) == "a young dog"
