"""Tests of the corpus cleaner, the document split and the BPE tokenizer (mgm2fp.data.corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mgm2fp.data.corpus import (
    assign_split,
    build_corpus,
    clean_inline_rst,
    clean_markdown,
    clean_plain_text,
    clean_rst,
    document_format,
    read_documents,
    train_bpe_tokenizer,
)
from mgm2fp.errors import ConfigError, OutputExistsError, SourceNotFoundError

RST_SNIPPET = """\
:mod:`json` --- JSON encoder and decoder
========================================

.. module:: json
   :synopsis: Encode and decode the JSON format.

.. _json-intro:

**Source code:** :source:`Lib/json/__init__.py`

--------------

`JSON <https://json.org>`_ is a lightweight data interchange format
inspired by :func:`~json.decoder.scanstring` and the :ref:`encoder classes <json-encoders>`
of this module [#errata]_.

.. warning::
   Be cautious when parsing JSON data from untrusted sources
   because it may use considerable memory.

Encoding basic Python objects works like this::

    >>> import json
    >>> json.dumps(['foo', {'bar': ('baz', None, 1.0, 2)}])

.. code-block:: python

   def this_is_code(): return "dropped"

>>> print("a doctest block is dropped entirely")
a doctest block is dropped entirely

.. function:: dumps(obj, *, skipkeys=False,
                    ensure_ascii=True)

   Serialize *obj* to a JSON formatted ``str`` using this conversion table.

   .. versionadded:: 3.4
      The keyword-only arguments were added in this release.

=========  ===========================
Python     JSON
=========  ===========================
dict       object, as a mapping table
=========  ===========================

+------------+-------------------------------------+
| grid cell  | another grid cell with some words   |
+------------+-------------------------------------+

* The first bullet item has enough words to count.
* The second bullet item
  continues on another line.

:Author: Somebody Important Who Wrote This

.. This comment says nothing that should remain in the corpus.

.. [#errata] A footnote body that is dropped from the text.
"""


def test_clean_rst_keeps_prose_paragraphs() -> None:
    paragraphs = clean_rst(RST_SNIPPET)

    assert paragraphs == [
        "JSON is a lightweight data interchange format inspired by scanstring and the encoder classes of this module.",
        "Be cautious when parsing JSON data from untrusted sources because it may use considerable memory.",
        "Encoding basic Python objects works like this:",
        "Serialize obj to a JSON formatted str using this conversion table.",
        "The keyword-only arguments were added in this release.",
        "The first bullet item has enough words to count.",
        "The second bullet item continues on another line.",
    ]


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        (":class:`!Foo` and :meth:`~a.b.Cls.method`", "Foo and method"),
        (":ref:`the tutorial <tut-intro>` explains it", "the tutorial explains it"),
        ("``x = 1`` and `default role`", "x = 1 and default role"),
        ("`Python site <https://python.org>`__ and target_ words", "Python site and target words"),
        ("*emphasis* and **strong** text", "emphasis and strong text"),
        ("a note [1]_ and |version| here", "a note and here"),
        ("keep ``__init__`` and ``*args``", "keep __init__ and *args"),
        ("escaped\\ text and \\*star", "escapedtext and *star"),
    ],
)
def test_clean_inline_rst(markup: str, text: str) -> None:
    assert clean_inline_rst(markup) == text


def test_clean_markdown_drops_code_and_headings() -> None:
    text = "# Title\n\nSome [linked text](https://example.org) with `code` and **bold** words.\n\n```python\nprint('dropped code block here')\n```\n\n| a | table | row | here |\n\n- A list item with several words.\n"

    assert clean_markdown(text) == ["Some linked text with code and bold words.", "A list item with several words."]


def test_clean_plain_text_joins_lines() -> None:
    assert clean_plain_text("First paragraph spans\ntwo lines here.\n\nToo short.\n\nSecond paragraph has words too.\n") == [
        "First paragraph spans two lines here.",
        "Second paragraph has words too.",
    ]


@pytest.mark.parametrize(("name", "kind"), [("a.rst", "rst"), ("lib/json.rst.txt", "rst"), ("b.md", "markdown"), ("c.txt", "text"), ("d.py", None)])
def test_document_format(name: str, kind: str | None) -> None:
    assert document_format(Path(name)) == kind


def make_source(folder: Path, count: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        sentence = f"Document number {index} describes topic {index % 7} in plain words for the corpus."
        (folder / f"doc{index:02d}.txt").write_text(f"{sentence}\n\n{sentence} It has a second paragraph.\n")
    (folder / "notes.md").write_text("# Heading\n\nA markdown document with a few words.\n")
    (folder / "guide.rst").write_text("Title\n=====\n\nAn rst document with several plain words.\n")
    (folder / "ignored.py").write_text("print('not a document')\n")
    return folder


def test_build_corpus_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source")
    first = build_corpus(source, tmp_path / "first", validation_fraction=0.2, heldout_fraction=0.1, seed=3)
    build_corpus(source, tmp_path / "second", validation_fraction=0.2, heldout_fraction=0.1, seed=3)

    for name in ("train.txt", "validation.txt", "heldout.txt"):
        assert (tmp_path / "first" / name).read_text() == (tmp_path / "second" / name).read_text()
    names = json.loads((tmp_path / "first" / "corpus.json").read_text())["names"]
    sets = {split: set(values) for split, values in names.items()}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["heldout"]
    assert not sets["validation"] & sets["heldout"]
    assert set().union(*sets.values()) == {f"doc{index:02d}.txt" for index in range(40)} | {"notes.md", "guide.rst"}
    assert first.documents["validation"] > 0
    assert first.documents["heldout"] > 0
    assert len(read_documents(tmp_path / "first" / "train.txt")) == first.documents["train"]


def test_assign_split_ignores_other_documents(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source", count=10)
    build_corpus(source, tmp_path / "small", validation_fraction=0.3, heldout_fraction=0.1)
    make_source(source, count=40)
    build_corpus(source, tmp_path / "large", validation_fraction=0.3, heldout_fraction=0.1)

    small = json.loads((tmp_path / "small" / "corpus.json").read_text())["names"]
    large = json.loads((tmp_path / "large" / "corpus.json").read_text())["names"]
    for split in small:
        assert set(small[split]) <= set(large[split])
    for split, names in small.items():
        for name in names:
            assert assign_split(name, validation_fraction=0.3, heldout_fraction=0.1) == split


def test_build_corpus_rejects_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="not a folder"):
        build_corpus(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFoundError, match="no .rst"):
        build_corpus(tmp_path / "empty", tmp_path / "out")
    source = make_source(tmp_path / "source", count=3)
    with pytest.raises(ConfigError, match="fraction"):
        build_corpus(source, tmp_path / "out", validation_fraction=0.6, heldout_fraction=0.5)
    build_corpus(source, tmp_path / "out")
    with pytest.raises(OutputExistsError):
        build_corpus(source, tmp_path / "out")


def test_tokenizer_round_trips_text(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    source = make_source(tmp_path / "source")
    build_corpus(source, tmp_path / "corpus")
    train_bpe_tokenizer(read_documents(tmp_path / "corpus" / "train.txt"), tmp_path / "tokenizer", vocab_size=300)

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    text = "Document number 12 describes topic 5 in plain words.\nUnseen: naïve café, ünïcode & symbols {}!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) <= 300
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.bos_token_id == tokenizer.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == tokenizer.eos_token_id
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "tokenizer" / name).is_file()
    assert json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tokenizer_rejects_tiny_vocabulary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size 100"):
        train_bpe_tokenizer(["some text"], tmp_path / "tokenizer", vocab_size=100)
