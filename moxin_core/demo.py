"""``moxin demo``: the whole tiny pipeline on the embedded defaults, with a summary."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from moxin_core.export_hf import export_hf
from moxin_core.plugins import Registry
from moxin_core.presets import resolve_config
from moxin_core.train import ensure_embedded_tokenizer, train_variant

DEMO_VARIANT = "moxin-tiny-base"
DEMO_PROMPT = "Question: Mia has 12 apples. She buys 7 more apples."


def run_demo(out: str | Path = "runs/demo", fresh: bool = True) -> dict:
    """Tokenizer -> moxin-tiny-base (three phases) -> HF export -> a generated sample."""
    from moxin_core.cli import generate

    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    registry = Registry()
    variant = registry.get("variants", DEMO_VARIANT)()
    vocab = resolve_config(variant.stages[0].model, registry).vocab_size
    print(f"[1/4] Training the tokenizer on the embedded corpus (vocab {vocab}) ...")
    ensure_embedded_tokenizer(out / "tokenizer", vocab)
    print(f"[2/4] Pretraining {DEMO_VARIANT}: "
          + " -> ".join(s.name for s in variant.stages) + " ...")
    results = train_variant(DEMO_VARIANT, out, registry=registry)
    final = results[-1].out_dir
    print("[3/4] Exporting the final model to HF format ...")
    export_dir = export_hf(final, out / "export-hf", force=True)
    print("[4/4] Generating a sample ...")
    sample = generate(str(export_dir), DEMO_PROMPT, max_new_tokens=40)
    wall = time.perf_counter() - started

    print("\n" + "=" * 72)
    print(f"moxin demo: {DEMO_VARIANT} in {wall:.0f} s")
    for r in results:
        print(f"  {r.name:<14} loss {r.first_loss:.3f} -> {r.last_loss:.3f}  "
              f"{r.steps:>4} steps  {r.tokens_per_second:,.0f} tokens/s  {r.out_dir}")
    first, last = results[0].first_loss, results[-1].last_loss
    print(f"  overall loss {first:.3f} -> {last:.3f} ({last / first:.0%} of the first step)")
    print(f"  HF export:   {export_dir}  (AutoModelForCausalLM.from_pretrained loads it)")
    print(f"  loss plots:  {', '.join(str(r.out_dir / 'loss.png') for r in results)}")
    print(f"  prompt:      {DEMO_PROMPT}")
    print(f"  completion:  {sample.strip()}")
    print("=" * 72)
    return {"results": results, "export": export_dir, "sample": sample, "seconds": wall}
