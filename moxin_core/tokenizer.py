"""Train and load the Moxin-style SentencePiece tokenizer.

Moxin (like Mistral) uses a SentencePiece BPE vocabulary with byte fallback and the special ids
``<unk>``=0, ``<s>``=1, ``</s>``=2. ``train_tokenizer`` trains such a vocabulary on a corpus and saves
a transformers tokenizer folder (``tokenizer.model``, ``tokenizer.json``, ``tokenizer_config.json``)
that carries the Moxin chat template, so the folder loads with ``AutoTokenizer.from_pretrained`` and
gives the same ids as ``sentencepiece`` itself.

Two choices make ``decode(encode(x)) == x`` hold exactly: the normaliser is the identity (no NFKC,
no whitespace folding: code keeps its tabs and runs of spaces), and no dummy prefix space is
added, so leading spaces survive and sentencepiece and the transformers tokenizer agree on every
input (the transformers Metaspace pre-tokeniser and sentencepiece disagree on leading spaces when a
dummy prefix is used).
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from moxin_core.errors import MoxinError

#: Roles and markers of the Moxin chat format (DESIGN.md §2).
#: closes every assistant reply in the chat template; generation of a reply stops there
END_OF_TURN = "<|endoftext|>"
CHAT_SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", END_OF_TURN)
UNK, BOS, EOS = "<unk>", "<s>", "</s>"

#: ``<|system|>\n{system}\n<|user|>\n{user}\n<|assistant|>\n{reply}<|endoftext|>``; turns repeat,
#: separated by a newline after each ``<|endoftext|>`` (the Tulu 3 convention); the system turn is
#: optional; the sequence starts with the BOS token like every pretraining document. Each reply
#: with its ``<|endoftext|>`` sits in ``{% generation %}`` markers: transformers'
#: ``apply_chat_template(..., return_assistant_tokens_mask=True)`` labels exactly those tokens
#: (SFT, DPO), and llama-cpp-python renders the template with them.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n' }}"
    "{%- generation -%}{{ message['content'] + '<|endoftext|>' }}{%- endgeneration -%}"
    "{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}"
    "{%- else -%}"
    "{{ raise_exception('Unknown chat role ' + message['role'] + '; use system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

#: Every byte needs a piece (byte fallback), plus the three control and the four chat symbols.
BYTE_FALLBACK_MINIMUM = 256 + 3 + len(CHAT_SPECIAL_TOKENS)


def _documents(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text:
            yield text


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *, max_sentences: int = 2_000_000,
                        num_threads: int = 2) -> bytes:
    """Train a SentencePiece BPE model with byte fallback; returns the serialized model proto."""
    import sentencepiece as spm

    if vocab_size < BYTE_FALLBACK_MINIMUM + 1:
        raise MoxinError(
            f"Vocabulary size {vocab_size} is too small: byte fallback needs {256} byte pieces, "
            f"plus <unk>, <s>, </s> and the {len(CHAT_SPECIAL_TOKENS)} chat markers "
            f"({BYTE_FALLBACK_MINIMUM} in all), and at least one learned piece. Use "
            f"--vocab-size {BYTE_FALLBACK_MINIMUM + 64} or more (moxin-tiny uses 4096).")
    counting = _Counting(_documents(texts))
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counting, model_writer=model, vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            user_defined_symbols=list(CHAT_SPECIAL_TOKENS),
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, split_digits=True, allow_whitespace_only_pieces=True,
            character_coverage=0.9995, max_sentence_length=1 << 16,
            input_sentence_size=max_sentences, shuffle_input_sentence=True,
            num_threads=num_threads, minloglevel=2,
        )
    except RuntimeError as exc:
        if counting.count == 0:
            raise MoxinError("The tokenizer corpus is empty: no non-empty document was read. "
                             "Point --corpus at files with text in them.") from None
        message = str(exc)
        if "Vocabulary size too high" in message:
            limit = message.rsplit("<=", 1)[-1].strip(" .")
            raise MoxinError(
                f"The corpus ({counting.count} documents) is too small for a vocabulary of "
                f"{vocab_size} pieces; sentencepiece can build at most {limit}. Use a smaller "
                "--vocab-size or a larger corpus.") from None
        if "Vocabulary size is smaller than required_chars" in message:
            raise MoxinError(
                f"Vocabulary size {vocab_size} is smaller than the number of distinct characters "
                f"the corpus needs ({message.rsplit(' vs ', 1)[-1].strip(' .')}); raise "
                "--vocab-size.") from None
        raise MoxinError(f"sentencepiece failed to train: {message}") from None
    if counting.count == 0:
        raise MoxinError("The tokenizer corpus is empty: no non-empty document was read. "
                         "Point --corpus at files with text in them.")
    return model.getvalue()


class _Counting:
    """Iterator wrapper that counts what sentencepiece consumed (for error messages)."""

    def __init__(self, it: Iterator[str]) -> None:
        self.it, self.count = it, 0

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> str:
        item = next(self.it)
        self.count += 1
        return item


def save_tokenizer_folder(model_proto: bytes, out: str | Path) -> Path:
    """Write a transformers tokenizer folder for a sentencepiece model carrying the chat template."""
    from transformers import AutoTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging_dir:
        staging = Path(staging_dir)
        (staging / "tokenizer.model").write_bytes(model_proto)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": None,
            "add_bos_token": True, "add_eos_token": False,
            # no dummy prefix: matches how the sentencepiece model was trained (see module doc)
            "add_prefix_space": False, "legacy": False,
            "model_max_length": 32768,
            "chat_template": CHAT_TEMPLATE,
        }
        (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        tokenizer = AutoTokenizer.from_pretrained(staging, trust_remote_code=False)
        # special: skipped by decode(skip_special_tokens=True), never split inside text
        tokenizer.add_special_tokens({"extra_special_tokens": list(CHAT_SPECIAL_TOKENS)})
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(out)
    # transformers writes tokenizer.json; llama.cpp/GGUF converters and sentencepiece need the model
    (out / "tokenizer.model").write_bytes(model_proto)
    return out


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: str | Path) -> Path:
    """Train a Moxin-style tokenizer on ``texts`` and save it as a transformers folder at ``out``."""
    return save_tokenizer_folder(train_sentencepiece(texts, vocab_size), out)


#: files that hold a tokenizer's vocabulary (a folder with none of them holds no tokenizer)
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json",
                    "vocab.txt", "sentencepiece.bpe.model")


def load_tokenizer(path: str | Path):
    """Load a tokenizer folder (or hub id) with transformers; clear errors when it is missing,
    holds no vocabulary or a damaged ``tokenizer.model``."""
    from transformers import AutoTokenizer

    local = Path(path).expanduser()
    if str(path).startswith((".", "/", "~")) and not local.exists():
        raise MoxinError(f"Tokenizer folder {str(path)!r} does not exist. Train one with "
                         "`moxin tokenizer train --corpus embedded --vocab-size 4096 --out DIR`.")
    if local.exists():
        check_tokenizer_folder(local)
    try:
        return AutoTokenizer.from_pretrained(local if local.exists() else str(path),
                                             trust_remote_code=False)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MoxinError(f"Could not load a tokenizer from {str(path)!r}: "
                         f"{type(exc).__name__}: {first_line}. Give a tokenizer folder "
                         "(tokenizer.json or tokenizer.model with tokenizer_config.json) or a "
                         "hub id reachable from this machine.") from None


def check_tokenizer_folder(folder: Path) -> None:
    """Refuse a local tokenizer "folder" that is a file, has no vocabulary file (transformers
    would build an empty tokenizer from ``tokenizer_config.json`` alone) or a ``tokenizer.model``
    sentencepiece cannot read (it is copied into every exported model)."""
    if not folder.is_dir():
        raise MoxinError(f"Tokenizer {str(folder)!r} is a file; give the tokenizer's folder (with "
                         "tokenizer.json or tokenizer.model, and tokenizer_config.json).")
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise MoxinError(f"Tokenizer folder {str(folder)!r} holds no vocabulary: none of "
                         f"{', '.join(VOCABULARY_FILES)}. Moxin tokenizers keep tokenizer.model "
                         "and tokenizer.json; copy the whole folder again, or train one with "
                         "`moxin tokenizer train`.")
    model = folder / "tokenizer.model"
    if model.is_file():
        import re

        import sentencepiece as spm

        data = model.read_bytes()
        if re.match(rb"[A-Za-z0-9+/=]+ \d+\r?\n", data):
            return  # a tiktoken vocabulary ("<base64 token> <rank>" lines), not sentencepiece
        try:
            spm.SentencePieceProcessor(model_proto=data)
        except Exception:  # sentencepiece's own message is a protobuf parser's
            raise MoxinError(f"{model} cannot be read by sentencepiece: it is no sentencepiece "
                             "model, or it was truncated or overwritten. Copy the tokenizer "
                             "folder again or train one with `moxin tokenizer train`.") from None


def reply_stop_ids(tokenizer) -> list[int]:
    """Ids that end an assistant reply: EOS, and the end-of-turn marker when the vocabulary has
    it (a tokenizer without it maps the marker to ``<unk>``, which must not stop generation)."""
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end, int) and end != tokenizer.unk_token_id and end not in stop:
        stop.append(end)
    return stop
