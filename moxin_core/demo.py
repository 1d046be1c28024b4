"""``moxin demo``: the whole tiny pipeline on the embedded defaults, with a summary.

Tokenizer -> ``moxin-tiny-base`` (three pretraining phases) -> ``moxin-tiny-instruct`` (SFT, DPO)
with held-out accuracy after each -> ``moxin-tiny-reasoning`` (reasoning SFT, GRPO) with held-out
maths accuracy before and after GRPO -> ``moxin-tiny-vlm`` (a vision encoder and projector on the
instruct model, trained on pictures of shapes) with held-out accuracy against chance -> HF export
of the instruct model -> GGUF ``q8_0`` export answering one chat turn through llama.cpp -> the
lm-eval ``tiny`` suite on every stage's language model and the GGUF file, side by side. The
instruct, reasoning, VLM, GGUF and lm-eval steps come from plugins (looked up by registry name,
the core never imports them) and are skipped with a note when those plugins are not installed.
Figures are printed and stored in ``<out>/demo_summary.json``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from moxin_core.export import export_hf
from moxin_core.models.family import resolve_model
from moxin_core.plugins import Registry
from moxin_core.reporting import metric_ends, write_json_atomic
from moxin_core.runtime import generate, load_runtime
from moxin_core.training.blocks import ensure_embedded_tokenizer
from moxin_core.training.stage import run_evaluators, train_variant

DEMO_VARIANT = "moxin-tiny-base"
INSTRUCT_VARIANT = "moxin-tiny-instruct"
REASONING_VARIANT = "moxin-tiny-reasoning"
VLM_VARIANT = "moxin-tiny-vlm"
SHAPES_EVALUATOR = "heldout-shapes"
ARITHMETIC_EVALUATOR = "heldout-arithmetic"
MATH_EVALUATOR = "heldout-math"
LM_EVAL = "lm-eval"
#: documents per task of the lm-eval ``tiny`` suite in the demo
LM_EVAL_LIMIT = 200
DEMO_PROMPT = "Question: Mia has 12 apples. She buys 7 more apples."
DEMO_QUESTION = "Mia has 12 apples. She buys 7 more. How many apples does Mia have now?"


REWARD_WINDOW = 5


def _has(registry: Registry, category: str, name: str) -> bool:
    return name in registry.names(category)


def run_demo(out: str | Path = "runs/demo", fresh: bool = True,
             registry: Registry | None = None) -> dict[str, Any]:
    """Run every demo step into ``out`` (replaced when ``fresh``); returns the summary dict."""
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    registry = registry or Registry()
    variant = registry.get("variants", DEMO_VARIANT)()
    instruct = _has(registry, "variants", INSTRUCT_VARIANT)
    gguf = _has(registry, "exporters", "gguf")
    reasoning = instruct and _has(registry, "variants", REASONING_VARIANT)
    vision = instruct and _has(registry, "variants", VLM_VARIANT)
    lm_eval = _has(registry, "evaluators", LM_EVAL)
    steps = 5 + instruct + reasoning + vision + gguf + lm_eval
    step = iter(range(1, steps + 1))
    first = resolve_model(registry, variant.stages[0].model)
    vocab = first.family.vocab_size(first.config())
    print(f"[{next(step)}/{steps}] Training the tokenizer on the embedded corpus (vocab {vocab}) ...")
    ensure_embedded_tokenizer(out / "tokenizer", vocab)
    print(f"[{next(step)}/{steps}] Pretraining {DEMO_VARIANT}: "
          + " -> ".join(s.name for s in variant.stages) + " ...")
    results = train_variant(DEMO_VARIANT, out, registry=registry)
    accuracy: dict[str, dict[str, float]] = {}
    if instruct:
        print(f"[{next(step)}/{steps}] Held-out arithmetic accuracy of the base model ...")
        accuracy[results[-1].name] = run_evaluators(
            registry, [ARITHMETIC_EVALUATOR], results[-1].out_dir / "hf")[ARITHMETIC_EVALUATOR]
        print(f"[{next(step)}/{steps}] Instruction tuning {INSTRUCT_VARIANT}: SFT -> DPO ...")
        tuned = train_variant(INSTRUCT_VARIANT, out, registry=registry)
        for r in tuned:
            if ARITHMETIC_EVALUATOR in r.evals:
                accuracy[r.name] = r.evals[ARITHMETIC_EVALUATOR]
        results += tuned
    else:
        print("(moxin-plugin-instruct is not installed: skipping SFT and DPO)")
    final = results[-1].out_dir  # exported: the chat model
    maths: dict[str, dict[str, float]] = {}
    if reasoning:
        print(f"[{next(step)}/{steps}] Reasoning {REASONING_VARIANT}: reasoning SFT -> GRPO ...")
        reasoned = train_variant(REASONING_VARIANT, out, registry=registry)
        maths = {r.name: r.evals[MATH_EVALUATOR] for r in reasoned if MATH_EVALUATOR in r.evals}
        results += reasoned
    elif instruct:
        print("(moxin-plugin-reasoning is not installed: skipping reasoning SFT and GRPO)")
    shapes: dict[str, float] = {}
    shapes_before: dict[str, float] = {}
    if vision:
        print(f"[{next(step)}/{steps}] Vision-language model {VLM_VARIANT}: a vision encoder and "
              "projector on the instruct model, trained on pictures of shapes ...")
        seen = train_variant(VLM_VARIANT, out, registry=registry)
        scored = next((r for r in seen if SHAPES_EVALUATOR in r.evals), None)
        if scored is not None:
            shapes = scored.evals[SHAPES_EVALUATOR]
            shapes_before = scored.start_evals.get(SHAPES_EVALUATOR, {})
        results += seen
    elif instruct:
        print("(moxin-plugin-vlm is not installed: skipping the vision-language model)")
    print(f"[{next(step)}/{steps}] Exporting the final model to HF format ...")
    export_dir = export_hf(final, out / "export-hf", force=True, registry=registry)
    print(f"[{next(step)}/{steps}] Generating a sample ...")
    sample = generate(str(results[len(variant.stages) - 1].out_dir / "hf"), DEMO_PROMPT,
                      max_new_tokens=40, registry=registry)
    chat_reply, gguf_path = None, None
    if gguf:
        print(f"[{next(step)}/{steps}] Exporting to GGUF q8_0 and chatting through llama.cpp ...")
        exporter = registry.get("exporters", "gguf")()
        gguf_path = exporter(str(final), str(out / "model-q8_0.gguf"), force=True, outtype="q8_0")
        runtime = load_runtime(str(gguf_path), registry)
        chat_reply = runtime.chat([{"role": "user", "content": DEMO_QUESTION}], max_new_tokens=48)
    else:
        print("(moxin-plugin-gguf is not installed: skipping the GGUF export)")
    suite: list[tuple[str, dict[str, float]]] = []
    if lm_eval:
        print(f"[{next(step)}/{steps}] Scoring every stage's language model with lm-eval (suite "
              f"tiny, {LM_EVAL_LIMIT} questions per task) ...")
        scorer = registry.get("evaluators", LM_EVAL)(suite="tiny", limit=LM_EVAL_LIMIT)
        for r in results:
            folder = r.out_dir / "hf"
            if resolve_model(registry, str(folder)).family.name == "causal-lm":  # not the VLM
                suite.append((r.name, scorer(str(folder))))
        if gguf_path is not None:
            suite.append(("GGUF q8_0", scorer(str(gguf_path))))
    else:
        print("(moxin-plugin-lmeval is not installed: skipping the lm-eval table)")
    wall = time.perf_counter() - started

    print("\n" + "=" * 76)
    print(f"moxin demo: {DEMO_VARIANT}" + (f" + {INSTRUCT_VARIANT}" if instruct else "")
          + (f" + {REASONING_VARIANT}" if reasoning else "")
          + (f" + {VLM_VARIANT}" if vision else "") + f" in {wall:.0f} s")
    for r in results:
        rewards = metric_ends(r.out_dir, "train/reward", REWARD_WINDOW)
        if rewards:  # an RL stage: its loss says little, the reward says how it went
            print(f"  {r.name:<14} reward {rewards[0]:.3f} -> {rewards[1]:.3f} (mean of the "
                  f"first and last {REWARD_WINDOW} steps)  {r.steps:>4} steps  {r.out_dir}")
            continue
        # a summed loss (SFT) is reported per token: its sum depends on the batch's tokens
        first_loss, last_loss = r.token_loss or (r.first_loss, r.last_loss)
        unit = " per token" if r.token_loss else ""
        print(f"  {r.name:<14} loss{unit} {first_loss:.3f} -> {last_loss:.3f}  "
              f"{r.steps:>4} steps  {r.tokens_per_second:,.0f} tokens/s  {r.out_dir}")
    base = results[: len(variant.stages)]
    first, last = base[0].first_loss, base[-1].last_loss
    print(f"  pretraining loss {first:.3f} -> {last:.3f} ({last / first:.0%} of the first step)")
    for stage, scores in accuracy.items():
        print(f"  held-out arithmetic accuracy after {stage:<8} {scores['accuracy']:.0%} "
              f"(answered {scores['answered']:.0%} of {scores['n']:.0f})")
    preference = next((r.evals["heldout-preferences"] for r in results
                       if "heldout-preferences" in r.evals), None)
    if preference:
        print(f"  held-out DPO reward accuracy          {preference['reward_accuracy']:.0%} "
              f"(margin {preference['margin']:.3f}, {preference['n']:.0f} pairs)")
    for stage, scores in maths.items():
        print(f"  held-out maths pass@1 after {stage:<14} {scores['pass@1']:.0%} "
              f"(greedy, {scores['n']:.0f} problems)")
    if len(maths) > 1:
        (before, low), (after, high) = list(maths.items())[0], list(maths.items())[-1]
        gain = 100 * (high["pass@1"] - low["pass@1"])
        print(f"  GRPO changed held-out maths pass@1 by {gain:+.1f} points ({before} -> {after})")
    if shapes:
        both = "accuracy/colour+shape"
        if shapes_before:
            before = shapes_before
            print(f"  held-out shapes questions (VLM) before training {before['accuracy']:.0%} "
                  f"right, colour and shape {before[both]:.0%}")
        print(f"  held-out shapes questions (VLM) after training  {shapes['accuracy']:.0%} right, "
              f"colour and shape {shapes[both]:.0%} ({shapes['n']:.0f} questions; guessing: "
              f"{shapes['chance']:.0%}, colour and shape {shapes['chance/colour+shape']:.0%})")
    if suite:
        columns = [k for k in suite[0][1] if k != "average"]
        print(f"  lm-eval suite tiny ({LM_EVAL_LIMIT} questions per task, % right):")
        print("    " + f"{'model':<16}" + "".join(f"{c:>10}" for c in columns))
        for name, scores in suite:
            print("    " + f"{name:<16}" + "".join(f"{100 * scores[c]:>10.1f}" for c in columns))
    print(f"  HF export:   {export_dir}  (AutoModelForCausalLM.from_pretrained loads it)")
    print(f"  loss plots:  {out}/<stage>/loss.png")
    print(f"  prompt:      {DEMO_PROMPT}")
    print(f"  completion:  {sample.strip()}")
    if gguf_path is not None:
        print(f"  GGUF q8_0:   {gguf_path}")
        print(f"  llama.cpp chat  user: {DEMO_QUESTION}")
        print(f"                  assistant: {chat_reply}")
    print("=" * 76)
    summary = {
        "seconds": round(wall, 1),
        "stages": [{"name": r.name, "steps": r.steps, "first_loss": r.first_loss,
                    "last_loss": r.last_loss, "token_loss": r.token_loss,
                    "tokens_per_second": r.tokens_per_second,
                    "evals": r.evals, "start_evals": r.start_evals, "folder": str(r.out_dir)}
                   for r in results],
        "heldout_arithmetic_accuracy": {k: v["accuracy"] for k, v in accuracy.items()},
        "heldout_reward_accuracy": preference["reward_accuracy"] if preference else None,
        "heldout_math_accuracy": {k: v["pass@1"] for k, v in maths.items()},
        "heldout_shapes": shapes or None,
        "heldout_shapes_before": shapes_before or None,
        "lm_eval_tiny": dict(suite) or None,
        "hf_export": str(export_dir),
        "sample": {"prompt": DEMO_PROMPT, "completion": sample},
        "gguf": str(gguf_path) if gguf_path else None,
        "gguf_chat": {"user": DEMO_QUESTION, "assistant": chat_reply} if gguf_path else None,
    }
    write_json_atomic(out / "demo_summary.json", summary)
    return {"results": results, "export": export_dir, "sample": sample, "seconds": wall,
            "summary": summary}
