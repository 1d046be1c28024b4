"""Tokenizer: exact round trips, sentencepiece/transformers id parity, the Moxin chat template."""

from __future__ import annotations

import pytest
import sentencepiece as spm

from moxin_core.errors import MoxinError
from moxin_core.tokenizer import BYTE_FALLBACK_MINIMUM, CHAT_SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from tests.conftest import assert_clean_error, run_cli

SAMPLES = [
    "The quiet baker carries fresh bread to the market.",
    "  leading spaces, trailing space ",
    "Zoë and José met in Kraków; the café served crème brûlée. Ångström, Łódź, naïve façade.",
    "中文分词测试：你好，世界！日本語のテキスト。한국어 문장입니다.",
    "Emoji 🙂🚲🎵 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "def total(items):\n\tresult = 0\n\tfor item in items:\n\t\tresult  +=  item\n    return result\n",
    "x    =   1\t\t# aligned    comment\n\n\n",
    "Control chars \x07 and rare symbols ⅋ ∮ ⟁ ꙮ",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(nano_tokenizer):
    return load_tokenizer(nano_tokenizer)


@pytest.fixture(scope="module")
def processor(nano_tokenizer):
    return spm.SentencePieceProcessor(model_file=str(nano_tokenizer / "tokenizer.model"))


def test_special_ids_and_files(nano_tokenizer, tokenizer):
    assert {p.name for p in nano_tokenizer.iterdir()} >= {"tokenizer.model", "tokenizer.json",
                                                          "tokenizer_config.json"}
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2 and tokenizer.unk_token_id == 0
    assert len(tokenizer) == 512
    for marker in CHAT_SPECIAL_TOKENS:
        assert len(tokenizer.encode(marker, add_special_tokens=False)) == 1, marker


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_match_sentencepiece(tokenizer, processor, text):
    assert tokenizer.encode(text, add_special_tokens=False) == processor.encode(text)
    assert processor.decode(processor.encode(text)) == text


def test_literal_control_tokens_in_text(tokenizer, processor):
    # sentencepiece never matches control symbols in text; transformers does unless told to split
    # them, which moxin's data pipeline does (see TextPacker)
    text = "Literal markers stay text: <s> </s> <unk>"
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == processor.encode(text)
    assert not {0, 1, 2} & set(ids)
    assert tokenizer.decode(ids) == text


def test_byte_fallback_is_used_for_unseen_characters(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode("ꙮ", add_special_tokens=False))
    assert pieces == ["<0xEA>", "<0x99>", "<0xAE>"]


def test_bos_is_added_on_encode(tokenizer):
    assert tokenizer("hello")["input_ids"][0] == 1


def test_chat_template_renders_the_moxin_format(tokenizer):
    messages = [
        {"role": "system", "content": "You are Moxin."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5."},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "8."},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == ("<s><|system|>\nYou are Moxin.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\n"
                        "2 + 3 = 5.<|endoftext|>\n<|user|>\nAnd 4 + 4?\n<|assistant|>\n8.<|endoftext|>")
    prompt = tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\nWhat is 2 + 3?\n<|assistant|>\n"
    ids = tokenizer.apply_chat_template(messages[1:3], tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages[1:3], tokenize=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "\nWhat is 2 + 3?\n\n2 + 3 = 5."


def test_chat_template_rejects_unknown_roles(tokenizer):
    with pytest.raises(Exception, match="Unknown chat role tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_vocab_below_byte_fallback_minimum(tmp_path):
    with pytest.raises(MoxinError, match="byte fallback"):
        train_tokenizer(["some text"] * 10, BYTE_FALLBACK_MINIMUM - 1, tmp_path / "t")


def test_empty_corpus(tmp_path):
    with pytest.raises(MoxinError, match="empty"):
        train_tokenizer(["", ""], 400, tmp_path / "t")


def test_cli_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_clean_error(run_cli("tokenizer", "train", "--corpus", str(empty), "--vocab-size",
                               "400", "--out", str(tmp_path / "a")), "empty")
    assert_clean_error(run_cli("tokenizer", "train", "--corpus", str(tmp_path / "nope.txt"),
                               "--vocab-size", "400", "--out", str(tmp_path / "b")),
                       "nope.txt", "matches no file")
    assert_clean_error(run_cli("tokenizer", "train", "--corpus", "embedded", "--vocab-size",
                               "100", "--out", str(tmp_path / "c")), "--vocab-size", "byte")
    small = tmp_path / "small.txt"
    small.write_text("tiny corpus\n")
    assert_clean_error(run_cli("tokenizer", "train", "--corpus", str(small), "--vocab-size",
                               "4000", "--out", str(tmp_path / "d")), "too small")


def test_cli_trains_on_files(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join('{"text": "line %d of a small corpus"}' % i for i in range(300)))
    result = run_cli("tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "300",
                     "--out", str(tmp_path / "tok"))
    assert result.returncode == 0, result.stderr
    tok = load_tokenizer(tmp_path / "tok")
    assert len(tok) == 300
    assert tok.decode(tok.encode("line 7 of a small corpus", add_special_tokens=False)) == \
        "line 7 of a small corpus"
