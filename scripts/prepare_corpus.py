"""Build a plain-prose corpus and a byte-level BPE tokenizer from a folder of .rst, .md or .txt files.

Writes ``OUTPUT/train.txt``, ``validation.txt``, ``heldout.txt`` and ``corpus.json`` (see
``mgm2fp.data.corpus.build_corpus``), then trains the tokenizer on ``train.txt`` and saves it in
the Hugging Face format to ``--tokenizer-output``.

Example (the tiny-pydocs corpus, from Debian's python3.11-doc package):

    python scripts/prepare_corpus.py --source /usr/share/doc/python3.11/html/_sources \\
        --output runs/tiny-pydocs/corpus --tokenizer-output runs/tiny-pydocs/tokenizer
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from mgm2fp.data.corpus import build_corpus, read_documents, train_bpe_tokenizer

logger = logging.getLogger("prepare_corpus")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="folder of .rst, .rst.txt, .md or .txt files (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="corpus folder to write")
    parser.add_argument("--tokenizer-output", type=Path, default=None, help="tokenizer folder to write (default: no tokenizer)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size, <|endoftext|> included")
    parser.add_argument("--validation-fraction", type=float, default=0.05, help="expected fraction of documents in validation.txt")
    parser.add_argument("--heldout-fraction", type=float, default=0.02, help="expected fraction of documents in heldout.txt")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document hash that assigns splits")
    parser.add_argument("--min-words", type=int, default=4, help="shortest paragraph kept, in words")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    stats = build_corpus(
        args.source,
        args.output,
        validation_fraction=args.validation_fraction,
        heldout_fraction=args.heldout_fraction,
        seed=args.seed,
        min_words=args.min_words,
        overwrite=args.overwrite,
    )
    logger.info("corpus: %s", json.dumps(asdict(stats)))
    if args.tokenizer_output is not None:
        train_bpe_tokenizer(read_documents(args.output / "train.txt"), args.tokenizer_output, vocab_size=args.vocab_size, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
