"""The ``llama.cpp`` runtime: chat-template parity, greedy parity with transformers, the CLI.

Uses the session model and exports of ``conftest.py``; parity is checked on the f32 export, whose
logits equal the HF model's within 1e-3 (``test_gguf.py``), so greedy decoding must pick the same
tokens.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from moxin_core import MoxinError

llama_cpp = pytest.importorskip("llama_cpp")

from moxin_plugin_gguf.export import export_gguf, verify_report_path  # noqa: E402
from moxin_plugin_gguf.runtime import LlamaCppRuntime  # noqa: E402

CONVERSATIONS = (
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name a fruit, s'il vous plaît: café ☕ 中文"}],
    [{"role": "system", "content": "Answer in code."},
     {"role": "user", "content": "def add(a, b):\n\treturn a + b"},
     {"role": "assistant", "content": "It adds two numbers."},
     {"role": "user", "content": "  and   subtracts? \U0001d11e"}],
)
PROMPT = "Question: Mia has 12 apples and buys 30 more."


@pytest.fixture(scope="module")
def runtime(exports):
    engine = LlamaCppRuntime(str(exports("f32")))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_tokenizer(hf_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_folder)


def _assert_clean_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("moxin: error:"), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


# --- selection --------------------------------------------------------------------------------


def test_gguf_paths_load_with_llama_cpp(exports):
    from moxin_core import Registry, get_plugin_manager
    from moxin_core.runtime import load_runtime

    registry = Registry(get_plugin_manager())
    assert registry.get("runtimes", "llama.cpp") is LlamaCppRuntime
    assert LlamaCppRuntime.accepts("m.gguf") and LlamaCppRuntime.accepts("M.GGUF")
    assert not LlamaCppRuntime.accepts("runs/x/hf")
    engine = load_runtime(str(exports("q8_0")), registry)
    assert isinstance(engine, LlamaCppRuntime) and engine.name == "llama.cpp"
    assert engine.n_ctx == 1024  # the file's context (max_position_embeddings)
    engine.close()


def test_context_is_capped_and_overflow_is_a_clear_error(exports, monkeypatch):
    from moxin_plugin_gguf import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "MAX_CONTEXT", 32)
    engine = LlamaCppRuntime(str(exports("q8_0")))
    assert engine.n_ctx == 32
    # generation stops when the context is full instead of failing
    assert len(engine.generate_ids(engine.tokenize("Hello", add_bos=True), 100, stop_ids=())) \
        == 32 - len(engine.tokenize("Hello", add_bos=True))
    with pytest.raises(MoxinError, match="holds 32") as info:
        engine.complete("word " * 40)
    assert str(exports("q8_0")) in str(info.value)
    engine.close()


# --- parity with transformers -----------------------------------------------------------------


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system", "multi-turn"])
def test_chat_prompt_is_what_apply_chat_template_gives(runtime, hf_tokenizer, messages):
    # the stored template keeps the {% generation %} marks SFT/DPO label replies with, and
    # llama.cpp renders it exactly as transformers does
    assert "{%- generation -%}" in runtime.header.chat_template
    expected_text = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     tokenize=False)
    expected_ids = list(hf_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    assert runtime.chat_prompt(messages) == expected_text
    ids = runtime.chat_prompt_ids(messages)
    assert ids == expected_ids
    assert ids[0] == hf_tokenizer.bos_token_id and ids.count(hf_tokenizer.bos_token_id) == 1
    assert ids[-2:] == hf_tokenizer.encode("<|assistant|>\n", add_special_tokens=False)


def test_greedy_complete_matches_hf_generate(runtime, hf_folder, hf_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32).eval()
    hf_ids = hf_tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    prompt_ids = runtime.tokenize(PROMPT, add_bos=True)
    assert prompt_ids == hf_ids[0].tolist()
    with torch.no_grad():
        output = model.generate(hf_ids, attention_mask=torch.ones_like(hf_ids), do_sample=False,
                                max_new_tokens=24, min_new_tokens=24, temperature=None,
                                top_p=None, top_k=None, pad_token_id=hf_tokenizer.eos_token_id)
    expected = output[0, hf_ids.shape[1]:].tolist()
    got = runtime.generate_ids(prompt_ids, 24, stop_ids=())
    assert got == expected
    # complete() is the same ids as text, ending early only at EOS / <|endoftext|>
    end = next((i for i, t in enumerate(expected) if t in runtime.stop_ids), len(expected))
    assert runtime.complete(PROMPT, 24) == hf_tokenizer.decode(expected[:end],
                                                               skip_special_tokens=True)


def test_sampling_is_seeded(runtime):
    first = runtime.complete(PROMPT, 12, temperature=1.0)
    assert runtime.complete(PROMPT, 12, temperature=1.0) == first


# --- through the CLI --------------------------------------------------------------------------


def test_cli_generate_gives_the_transformers_completion(moxin_cli, exports, hf_folder):
    from moxin_core.runtime import TransformersRuntime

    expected = TransformersRuntime(str(hf_folder)).complete(PROMPT, 16)
    result = moxin_cli("generate", exports("f32"), "--prompt", PROMPT, "--max-new-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert result.stderr == ""  # llama.cpp's log stays quiet


def test_cli_chat_gives_the_transformers_replies(moxin_cli, exports, hf_folder):
    from moxin_core.runtime import chat

    turns = ["What is 12 + 30?", "And 4 + 4?"]
    expected = io.StringIO()
    chat(str(hf_folder), turns, system="Be brief.", max_new_tokens=12, stdout=expected)
    args = [arg for turn in turns for arg in ("--message", turn)]
    result = moxin_cli("chat", exports("f32"), *args, "--system", "Be brief.",
                       "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.getvalue()
    assert result.stdout.count("assistant> ") == 2


# --- bad input --------------------------------------------------------------------------------


def test_missing_gguf_file(moxin_cli, tmp_path):
    missing = tmp_path / "absent.gguf"
    _assert_clean_error(moxin_cli("generate", missing, "--prompt", "hi"),
                        str(missing), "does not exist", "moxin export")


def test_text_file_named_gguf(moxin_cli, tmp_path):
    fake = tmp_path / "notes.gguf"
    fake.write_text("just some notes\n")
    _assert_clean_error(moxin_cli("chat", fake, "--message", "hi"),
                        str(fake), "is not a GGUF file")


def test_truncated_gguf_file(moxin_cli, exports, tmp_path):
    data = exports("q8_0").read_bytes()
    for name, size in (("header.gguf", 600), ("half.gguf", len(data) // 2)):
        broken = tmp_path / name
        broken.write_bytes(data[:size])
        with pytest.raises(MoxinError, match="truncated or corrupt|could not load") as info:
            LlamaCppRuntime(str(broken))
        assert str(broken) in str(info.value)
    _assert_clean_error(moxin_cli("generate", tmp_path / "half.gguf", "--prompt", "hi"),
                        str(tmp_path / "half.gguf"))


def test_chat_without_template_is_a_clear_error(hf_folder, tmp_path):
    folder = Path(shutil.copytree(hf_folder, tmp_path / "hf"))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    engine = LlamaCppRuntime(str(export_gguf(folder, tmp_path / "plain.gguf", verify=False)))
    assert engine.complete("Hello", 4) is not None  # plain completion still works
    with pytest.raises(MoxinError, match="no chat template"):
        engine.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(MoxinError, match="unknown role"):
        engine.chat([{"role": "bot", "content": "hi"}])
    engine.close()


# --- the verify option ------------------------------------------------------------------------


def test_verify_option_on_the_command_line(moxin_cli, exports, hf_folder, tmp_path):
    # on by default for a small model: the session's exports were made without the option
    assert json.loads(verify_report_path(exports("q8_0")).read_text())["passed"]
    unchecked = tmp_path / "unchecked.gguf"
    result = moxin_cli("export", hf_folder, "--format", "gguf", "--out", unchecked,
                       "--option", "outtype=q8_0", "--option", "verify=false")
    assert result.returncode == 0, result.stderr
    assert unchecked.read_bytes()[:4] == b"GGUF" and not verify_report_path(unchecked).exists()


def test_verify_defaults_off_for_large_models(hf_folder, tmp_path, monkeypatch):
    from moxin_plugin_gguf import export

    monkeypatch.setattr(export, "VERIFY_BY_DEFAULT_BELOW", 1000)  # the test model is "large"
    out = export_gguf(hf_folder, tmp_path / "big.gguf", outtype="f16")
    assert out.exists() and not verify_report_path(out).exists()
    out = export_gguf(hf_folder, tmp_path / "forced.gguf", outtype="f16", verify=True)
    assert json.loads(verify_report_path(out).read_text())["passed"]
