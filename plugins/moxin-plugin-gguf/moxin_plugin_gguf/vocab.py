"""The SentencePiece vocabulary of an HF folder, as GGUF's ``llama`` tokenizer metadata.

llama.cpp's ``llama`` tokenizer re-implements SentencePiece: it needs every piece, its score (the
BPE merge priority) and its type, with the same numbering as ``sentencepiece_model.proto``
(normal=1, unknown=2, control=3, user-defined=4, unused=5, byte=6), so types are copied as they are.

Embedding rows beyond the vocabulary: a vision-language checkpoint (prismatic) adds a ``<PAD>``
token and pads the embedding matrix to a multiple of 64 rows (32000 -> 32064), so the matrix has
more rows than ``tokenizer.model`` has pieces. llama.cpp requires one vocabulary entry per
embedding row, so the GGUF vocabulary is padded with ``<pad_N>`` (N = the row id) *control* tokens
of score 0: control tokens are never produced by tokenising plain text, so tokenisation is
unchanged, and the extra logits stay addressable by id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from moxin_core.api import MoxinError

CONTROL = 3  # sentencepiece_model.proto ModelProto.SentencePiece.Type.CONTROL == gguf TokenType.CONTROL


@dataclass
class Vocabulary:
    """What GGUF's ``tokenizer.ggml.*`` keys hold.

    ``tokens``/``scores``/``types``: one entry per id, ``len == n_rows`` of the embedding matrix.
    ``add_space_prefix``: the model proto's ``normalizer_spec.add_dummy_prefix`` (False for moxin).
    ``chat_template``: a Jinja string or None.
    """

    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int | None
    add_space_prefix: bool
    chat_template: str | None
    n_padded: int  # how many <pad_N> entries were appended


def load_vocabulary(folder: Path, n_rows: int) -> Vocabulary:
    """Read ``folder/tokenizer.model`` (and the chat template); pad to ``n_rows`` entries.

    Raises MoxinError when the model file is missing or has more pieces than embedding rows.
    """
    model_file = folder / "tokenizer.model"
    if not model_file.exists():
        raise MoxinError(
            f"{folder} has no tokenizer.model: the GGUF 'llama' vocabulary is built from the "
            "SentencePiece model file. Copy the tokenizer.model of the tokenizer this model was "
            "trained with into that folder (moxin's `save_hf_folder(..., tokenizer_dir)` and "
            "`moxin export --format hf` write it), then export again.")
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError, which is not exported stably
        raise MoxinError(f"{model_file} is not a SentencePiece model ({exc}).") from None
    if proto.trainer_spec.model_type not in (1, 2):  # UNIGRAM=1, BPE=2: what llama.cpp's SPM handles
        raise MoxinError(f"{model_file}: SentencePiece model type {proto.trainer_spec.model_type} "
                         "is not supported by llama.cpp's 'llama' tokenizer (use BPE or unigram).")

    tokens = [piece.piece.encode("utf-8") for piece in proto.pieces]
    scores = [float(piece.score) for piece in proto.pieces]
    types = [int(piece.type) for piece in proto.pieces]
    if len(tokens) > n_rows:
        raise MoxinError(f"{model_file} has {len(tokens)} pieces but the embedding matrix has only "
                         f"{n_rows} rows: this tokenizer does not belong to this model.")
    n_padded = n_rows - len(tokens)
    for row in range(len(tokens), n_rows):
        tokens.append(f"<pad_{row}>".encode())
        scores.append(0.0)
        types.append(CONTROL)

    spec = proto.trainer_spec
    pad_id = spec.pad_id if 0 <= spec.pad_id < n_rows else None
    return Vocabulary(
        tokens=tokens, scores=scores, types=types,
        bos_id=spec.bos_id, eos_id=spec.eos_id, unk_id=spec.unk_id, pad_id=pad_id,
        add_space_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
        chat_template=read_chat_template(folder), n_padded=n_padded)


def read_chat_template(folder: Path) -> str | None:
    """The chat template: ``chat_template.jinja`` (transformers 5) or tokenizer_config.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    config_file = folder / "tokenizer_config.json"
    if config_file.exists():
        template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None
