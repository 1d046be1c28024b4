"""`moxin demo` (what `make demo` runs) end to end on the embedded defaults."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.conftest import checkpoint_logits, hf_logits_without_moxin, run_cli


@pytest.mark.slow
@pytest.mark.timeout(3000)  # ~12 min on a quiet 2-core CPU; the suite default is 900 s per test
def test_demo_trains_exports_and_generates(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out), timeout=3000)
    assert result.returncode == 0, result.stderr[-4000:]
    stages = ["pretrain-128", "pretrain-256", "enhance"]
    manifests = [json.loads((out / s / "manifest.json").read_text()) for s in stages]
    assert all(m["status"] == "complete" for m in manifests)
    first, last = manifests[0]["first_loss"], manifests[-1]["last_loss"]
    assert last < 0.6 * first, (first, last)
    summary = result.stdout[result.stdout.index("moxin demo:"):]
    assert re.search(r"pretraining loss \d+\.\d+ -> \d+\.\d+", summary)
    assert "tokens/s" in summary and "completion:" in summary
    for stage in stages:
        assert (out / stage / "loss.png").stat().st_size > 10_000

    # the instruct and GGUF steps come from plugins; without them the demo says it skips them
    from moxin_core.plugins import Registry

    registry = Registry()
    instruct = "moxin-tiny-instruct" in registry.names("variants")
    gguf = "gguf" in registry.names("exporters")
    if not instruct:
        assert "moxin-plugin-instruct is not installed: skipping SFT and DPO" in result.stdout
    if not gguf:
        assert "moxin-plugin-gguf is not installed: skipping the GGUF export" in result.stdout

    # the exported folder reloads with plain transformers and gives the final model's logits
    loaded = hf_logits_without_moxin(out / "export-hf", "Question: Mia has 12 apples.")
    final = "dpo" if instruct else stages[-1]
    trained = checkpoint_logits(out / final, loaded["ids"])
    torch.testing.assert_close(torch.tensor(loaded["logits"]), trained, atol=1e-5, rtol=0)
    if not instruct:
        return

    # instruction tuning: SFT answers held-out questions far better than the base model; DPO
    # prefers the right answers on held-out pairs and does not lower answer accuracy
    stored = json.loads((out / "demo_summary.json").read_text())
    accuracy = stored["heldout_arithmetic_accuracy"]
    assert set(accuracy) == {"enhance", "sft", "dpo"}
    assert accuracy["sft"] >= 0.10 and accuracy["sft"] >= accuracy["enhance"] + 0.08, accuracy
    # DPO at the demo's lr changes few answers: within one standard error (2.3 points at 300
    # questions) of SFT's accuracy; fp-level changes anywhere upstream flip single answers
    assert accuracy["dpo"] >= accuracy["sft"] - 0.025, accuracy
    assert stored["heldout_reward_accuracy"] > 0.5
    for stage in ("sft", "dpo"):
        evals = json.loads((out / stage / "eval.json").read_text())
        assert evals["heldout-arithmetic"]["accuracy"] == accuracy[stage]
        assert f"after {stage}" in summary
    assert "held-out DPO reward accuracy" in summary

    # the SFT stage's summed loss is reported per token
    assert re.search(r"sft\s+loss per token \d+\.\d+ -> \d+\.\d+", summary), summary
    sft_stage = next(s for s in stored["stages"] if s["name"] == "sft")
    first, last = sft_stage["token_loss"]
    assert 0 < last < first < 10

    # reasoning: GRPO raises held-out greedy maths accuracy over its starting checkpoint (the
    # reasoning SFT model) by at least 5 points; both figures printed and stored in the run
    reasoning = "moxin-tiny-reasoning" in registry.names("variants")
    if reasoning:
        maths = stored["heldout_math_accuracy"]
        assert set(maths) == {"reasoning-sft", "grpo"}
        assert maths["grpo"] >= maths["reasoning-sft"] + 0.05, maths
        for stage in maths:
            evals = json.loads((out / stage / "eval.json").read_text())
            assert evals["heldout-math"]["pass@1"] == maths[stage]
            assert re.search(rf"held-out maths pass@1 after {stage}\s+\d+%", summary), summary
        assert re.search(r"GRPO changed held-out maths pass@1 by \+\d+\.\d points", summary)
        assert re.search(r"grpo\s+reward \d\.\d+ -> \d\.\d+", summary), summary
        grpo = json.loads((out / "grpo" / "manifest.json").read_text())
        assert grpo["status"] == "complete" and grpo["init"].endswith("reasoning-sft/hf")
    else:
        assert "moxin-plugin-reasoning is not installed" in result.stdout

    # the tiny VLM answers held-out colour and shape questions at least twice as often as
    # chance, and more than 60% of them; figures printed and stored in the run folder
    if "moxin-tiny-vlm" in registry.names("variants"):
        shapes = stored["heldout_shapes"]
        assert shapes["accuracy/colour+shape"] >= 2 * shapes["chance/colour+shape"], shapes
        assert shapes["accuracy/colour+shape"] > 0.6, shapes
        evals = json.loads((out / "vlm" / "eval.json").read_text())
        assert evals["heldout-shapes"] == shapes
        # before training: the same questions asked of the untrained VLM, scored lower
        before = stored["heldout_shapes_before"]
        assert before["n"] == shapes["n"]
        assert before["accuracy/colour+shape"] + 0.2 < shapes["accuracy/colour+shape"], before
        assert json.loads((out / "vlm" / "eval_start.json").read_text())["heldout-shapes"] == before
        assert re.search(r"held-out shapes questions \(VLM\) before training \d+% right, colour "
                         r"and shape \d+%", summary), summary
        assert re.search(r"held-out shapes questions \(VLM\) after training  \d+% right, colour "
                         r"and shape \d+% \(\d+ questions; guessing: \d+%", summary), summary
        assert (out / "vlm" / "hf" / "vlm.json").exists()
    else:
        assert "moxin-plugin-vlm is not installed" in result.stdout

    # the q8_0 GGUF answered one chat turn through llama.cpp
    if not gguf:
        return
    assert (out / "model-q8_0.gguf").stat().st_size > 1_000_000
    assert (out / "model-q8_0.gguf.verify.json").exists()
    assert stored["gguf_chat"]["assistant"].strip()
    assert "llama.cpp chat" in summary

    # the lm-eval tiny suite: every stage's language model and the q8_0 GGUF side by side
    if "lm-eval" not in registry.names("evaluators"):
        assert "moxin-plugin-lmeval is not installed" in result.stdout
        return
    table = stored["lm_eval_tiny"]
    expected = [*stages, "sft", "dpo"]
    if "moxin-tiny-reasoning" in registry.names("variants"):
        expected += ["reasoning-sft", "grpo"]
    assert list(table) == [*expected, "GGUF q8_0"]  # the VLM is not a text model: left out
    assert all(set(scores) == {"tiny-mc", "tiny-gen", "average"} for scores in table.values())
    # the GGUF file is the DPO model: llama.cpp's q8_0 scores stay within a few questions of it
    assert abs(table["GGUF q8_0"]["tiny-mc"] - table["dpo"]["tiny-mc"]) <= 0.03, table
    assert re.search(r"lm-eval suite tiny \(200 questions per task, % right\)", summary)
    assert re.search(r"GGUF q8_0\s+\d+\.\d\s+\d+\.\d", summary), summary
