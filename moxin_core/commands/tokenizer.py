"""``moxin tokenizer train``: a Moxin-style SentencePiece tokenizer from files or the corpus."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moxin_core.commands.base import Command


def tokenizer_train(corpus: Sequence[str], vocab_size: int, out: str,
                    text_field: str = "text") -> Path:
    """Train a tokenizer on files/globs, or on the embedded corpus (``embedded``)."""
    from moxin_core.data.sources import EmbeddedCorpus, Files
    from moxin_core.tokenizer import train_tokenizer

    sources = [EmbeddedCorpus() if spec == "embedded" else Files(spec, text_field=text_field)
               for spec in corpus]  # built up-front: a bad path fails before training starts

    def texts():
        for source in sources:
            for record, _ in source.iter_from(None):
                yield record["text"]

    return train_tokenizer(texts(), vocab_size, out)


class TokenizerCommand(Command):
    help = "tokenizer tools"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="tokenizer_verb", required=True, metavar="ACTION")
        train = actions.add_parser("train", help="train a SentencePiece BPE tokenizer")
        train.add_argument("--corpus", nargs="+", required=True,
                           help="text/JSONL/Parquet files or globs, or 'embedded'")
        train.add_argument("--vocab-size", type=int, required=True)
        train.add_argument("--out", required=True)
        train.add_argument("--text-field", default="text")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        out = tokenizer_train(args.corpus, args.vocab_size, args.out, args.text_field)
        print(f"Tokenizer written to {out}")
        return 0
