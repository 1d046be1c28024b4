"""moxin-plugin-gguf: GGUF export, llama.cpp parity, K-quants and bad inputs.

The model and its exports are the session fixtures of ``conftest.py``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from moxin_core import MoxinError

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from moxin_plugin_gguf.export import export_gguf, verify_report_path  # noqa: E402
from moxin_plugin_gguf.verify import TOKENIZER_PROBES, compare_tokenization  # noqa: E402

PROMPTS = ("The quick brown fox jumps over the lazy dog,",
           "def add(a, b):\n\treturn a + b\n",
           "<|user|>\nHello there\n<|assistant|>\n")


def _hf_vs_llama_cpp(hf_folder: Path, gguf_path: Path) -> tuple[float, float]:
    """Independent of the plugin's verify module: (max |diff|, top-1 agreement) over PROMPTS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32).eval()
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=128, logits_all=True, type_k=0,
                          type_v=0, verbose=False)
    diffs, agree, total = [], 0, 0
    for prompt in PROMPTS:
        ids = [tokenizer.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].numpy()
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
        diffs.append(np.abs(reference - got).max())
        agree += int((reference.argmax(-1) == got.argmax(-1)).sum())
        total += len(ids)
    llm.close()
    return float(max(diffs)), agree / total


def _tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


# --- parity -----------------------------------------------------------------------------------


def test_plugin_registers_the_gguf_exporter():
    from moxin_core import Registry, get_plugin_manager

    exporter = Registry(get_plugin_manager()).get("exporters", "gguf")()
    assert exporter is export_gguf


def test_f32_logits_match_transformers(exports, hf_folder):
    path = exports("f32")
    report = json.loads(verify_report_path(path).read_text())
    assert report["passed"] and report["logits"]["max_abs_diff"] <= 1e-3
    assert report["logits"]["top1_agreement"] == 1.0
    # the probes are not flat: top-1 agreement means something
    assert report["logits"]["max_abs_logit"] > 5
    max_diff, top1 = _hf_vs_llama_cpp(hf_folder, path)
    assert max_diff <= 1e-3 and top1 == 1.0


def test_q8_0_keeps_top1(exports, hf_folder):
    path = exports("q8_0")
    types = _tensor_types(path)
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    report = json.loads(verify_report_path(path).read_text())
    assert report["logits"]["top1_agreement"] >= 0.95
    assert _hf_vs_llama_cpp(hf_folder, path)[1] >= 0.95


@pytest.mark.parametrize("outtype,stored", [("f16", "F16"), ("bf16", "BF16")])
def test_half_precision_exports(exports, outtype, stored):
    types = _tensor_types(exports(outtype))
    assert types["output.weight"] == stored and types["output_norm.weight"] == "F32"


def test_qk_permutation_is_checked(hf_folder, tmp_path, monkeypatch):
    """Without the RoPE row permutation the parity check fails and leaves no file behind."""
    from moxin_plugin_gguf import writer

    monkeypatch.setattr(writer, "permute_for_llama_rope", lambda w, n_head: w)
    out = tmp_path / "bad.gguf"
    with pytest.raises(MoxinError, match="parity check failed"):
        export_gguf(hf_folder, out, outtype="f32", verify=True)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    assert json.loads(verify_report_path(out).read_text())["passed"] is False


def test_metadata(exports):
    reader = gguf.GGUFReader(exports("f32"))

    def field(key):
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama"
    assert field("llama.attention.head_count") == 8
    assert field("llama.attention.head_count_kv") == 2
    assert field("llama.rope.dimension_count") == 32
    assert field("llama.rope.freq_base") == 10000.0
    assert field("llama.context_length") == 1024
    assert field("tokenizer.ggml.add_space_prefix") is False
    assert field("tokenizer.ggml.add_bos_token") is True
    assert field("tokenizer.ggml.model") == "llama"
    assert "<|assistant|>" in field("tokenizer.chat_template")
    types = field("tokenizer.ggml.token_type")
    tokens = field("tokenizer.ggml.tokens")
    assert types[:3] == [2, 3, 3] and tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert types[tokens.index("<|user|>")] == 4 and types[tokens.index("<0x41>")] == 6


def test_tokenization_parity_on_probes(exports, hf_folder):
    from transformers import AutoTokenizer

    result = compare_tokenization(hf_folder, exports("f32"), TOKENIZER_PROBES)
    assert result["mismatches"] == []
    # the probe set really exercises byte fallback and the chat markers
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    pieces = {p for text in TOKENIZER_PROBES
              for p in tokenizer.convert_ids_to_tokens(tokenizer.encode(text,
                                                                        add_special_tokens=False))}
    assert any(p.startswith("<0x") for p in pieces) and "<|user|>" in pieces


# --- K-quants ---------------------------------------------------------------------------------


@pytest.mark.parametrize("outtype,expected", [("q4_k_m", "Q4_K"), ("q5_k_m", "Q5_K"),
                                              ("q6_k", "Q6_K")])
def test_k_quant_loads_and_generates(exports, outtype, expected):
    path = exports(outtype)
    assert expected in set(_tensor_types(path).values())
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    result = llm("The quick brown fox", max_tokens=5, temperature=0.0)
    llm.close()
    assert result["usage"]["completion_tokens"] >= 1
    report = json.loads(verify_report_path(path).read_text())
    assert report["tokenization"]["mismatches"] == [] and report["logits"]["positions"] > 0


# --- bad inputs -------------------------------------------------------------------------------


def _copy(hf_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(hf_folder, tmp_path / "hf"))


def test_rejects_other_architectures(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MoxinError, match="GPT2LMHeadModel"):
        export_gguf(folder, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_missing_tokenizer_model(hf_folder, tmp_path):
    folder = _copy(hf_folder, tmp_path)
    (folder / "tokenizer.model").unlink()
    with pytest.raises(MoxinError, match="no tokenizer.model") as info:
        export_gguf(folder, tmp_path / "x.gguf")
    assert str(folder) in str(info.value) and "Copy" in str(info.value)
    assert [p.name for p in tmp_path.iterdir() if ".gguf" in p.name] == []


def test_unknown_outtype(hf_folder, tmp_path):
    with pytest.raises(MoxinError, match="q4_k_m") as info:
        export_gguf(hf_folder, tmp_path / "x.gguf", outtype="q3_xx")
    assert "q3_xx" in str(info.value)


def test_existing_output_needs_force(hf_folder, tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"old")
    with pytest.raises(MoxinError, match="force"):
        export_gguf(hf_folder, out, outtype="f16", verify=False)
    assert out.read_bytes() == b"old"
    export_gguf(hf_folder, out, force=True, outtype="f16", verify=False)
    assert out.read_bytes()[:4] == b"GGUF"
    reference = tmp_path / "reference"
    reference.touch()  # the export gets ordinary permissions (not a temp file's 0600)
    assert out.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777


def test_stage_folder_uses_its_hf_export(hf_folder, tmp_path):
    stage = tmp_path / "stage"
    shutil.copytree(hf_folder, stage / "hf")
    out = export_gguf(stage, tmp_path / "s.gguf", outtype="f16", verify=False)
    assert gguf.GGUFReader(out).fields["general.name"].contents() == "stage"


def test_embedding_rows_beyond_vocabulary(hf_folder, tmp_path):
    """A VLM-style checkpoint padded 512 -> 576 rows exports with <pad_N> control tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    model.resize_token_embeddings(576, mean_resizing=False)
    folder = tmp_path / "padded"
    model.save_pretrained(folder)
    for name in ("tokenizer.model", "tokenizer_config.json", "tokenizer.json",
                 "chat_template.jinja"):
        if (hf_folder / name).exists():
            shutil.copy2(hf_folder / name, folder / name)
    out = export_gguf(folder, tmp_path / "padded.gguf", outtype="f32", verify=True)
    vocab = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    assert vocab.n_vocab() == 576
    assert vocab.detokenize([575], special=True) == b"<pad_575>"
    vocab.close()
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.ggml.token_type"].contents()[512:] == [3] * 64
    assert json.loads(verify_report_path(out).read_text())["passed"]


def test_the_export_carries_its_openness_report(hf_folder, tmp_path):
    """`FILE.gguf.MOF.md`/`.mof.json` beside the file: the GGUF itself is architecture and
    weights; what the stage's manifest links (code, data) counts only while it is recorded."""
    stage = tmp_path / "stage"
    shutil.copytree(hf_folder, stage / "hf")
    (stage / "manifest.json").write_text(json.dumps({
        "status": "complete", "versions": {"moxin-core": "0.1.0"}, "plugins": [],
        "data": {"fingerprint": "abc", "sources": ["embedded(seed=0)"]}}))
    out = export_gguf(stage, tmp_path / "m.gguf", outtype="f16", verify=False)
    report = json.loads((tmp_path / "m.gguf.mof.json").read_text())
    present = {c["name"]: c["present"] for c in report["components"]}
    assert present["Model architecture"] and present["Model parameters (final)"]
    assert present["Inference code"] and present["Training code"] and present["Training data"]
    assert not present["Training logs"] and not present["Licences"]  # none on disk
    assert "| Model parameters (final) | yes | m.gguf |" in (
        tmp_path / "m.gguf.MOF.md").read_text()
    assert out.is_file()


def test_a_lora_stage_exports_with_its_adapters_merged(hf_folder, tmp_path):
    """The GGUF of a LoRA stage runs in llama.cpp with the logits of the starting model with
    the adapters on (peft, unmerged)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moxin_core.training.stage import train_variant

    train_variant("moxin-tiny-base", tmp_path / "run", stage="pretrain-128", sets=[
        f"pretrain-128.model={hf_folder}", "seq_len=32", "micro_batch_size=2", "max_steps=3",
        "precision=32-true", "warmup_steps=0", "lr=0.02", "lora.r=8"])
    stage = tmp_path / "run" / "pretrain-128"
    out = export_gguf(stage, tmp_path / "lora.gguf", outtype="f32", verify=True)
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    base = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    with warnings.catch_warnings():  # peft's own deprecated call into transformers
        warnings.simplefilter("ignore", FutureWarning)
        unmerged = PeftModel.from_pretrained(base, stage / "adapter").eval()
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, logits_all=True, type_k=0, type_v=0,
                          verbose=False)
    ids = [tokenizer.bos_token_id] + tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    with torch.no_grad():
        want = unmerged(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    llm.close()
    assert np.abs(want - got).max() <= 1e-3
    with torch.no_grad(), unmerged.disable_adapter():
        start = unmerged(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(start - got).max() > 1e-2  # the adapters are in the file
