"""Training throughput of ``moxin train moxin-tiny-vlm`` against a bare PyTorch loop.

Run:  .venv/bin/python benchmarks/vlm_throughput.py [--llm FOLDER] [--steps N] [--repeats N]
                                                      [--json PATH]

The moxin path is ``train_variant("moxin-tiny-vlm")`` (what ``moxin train`` runs: Lightning with
moxin's callbacks, checkpointing, logging and progress bar) in a run folder whose
``moxin-tiny-instruct`` result is ``--llm`` (default ``runs/demo/dpo/hf`` after ``make demo``;
without it, a random tiny language model with the embedded tokenizer). The bare path builds the
same VLM, data, optimizer and schedule with moxin's public building blocks from the same
resolved stage and trains them in a plain loop (forward, backward, clip, step). Both time steps
the way ``TokenThroughput`` does (wall time between step ends, data included, the first 2 steps
left out) and count tokens as the objective does (text tokens plus image patches). Images/s is
tokens/s divided by the tokens per image-bearing example. Runs are interleaved (bare, moxin, ...)
because the machine is noisy; we report each run, the medians and moxin / bare (target >= 0.95).

Vision features are computed once per image per step: every call of the model's vision encoder
is counted in both paths (images encoded / images in the batches, expected 1.0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from moxin_core.api import (Registry, build_datamodule, build_module, build_objective,
                            resolve_model)
from moxin_core.module import build_optimizer, build_scheduler
from moxin_core.training.resolve import preset_references, resolve_variant, stage_start
from moxin_core.training.stage import train_variant

VARIANT, STAGE = "moxin-tiny-vlm", "vlm"
SKIP = 2
ENCODED = {"images": 0}


def count_vision_calls() -> None:
    """Count the images every VisionLanguageModel encodes (both paths use the class)."""
    from moxin_plugin_vlm.model import VisionLanguageModel

    original = VisionLanguageModel.image_embeddings
    if getattr(original, "counted", False):
        return

    def counted(self, pixel_values):
        ENCODED["images"] += int(pixel_values.shape[0])
        return original(self, pixel_values)

    counted.counted = True
    VisionLanguageModel.image_embeddings = counted


def run_folder(llm: Path | None, root: Path) -> Path:
    """A run folder holding a moxin-tiny-instruct result (its `dpo` stage)."""
    out = root / "run"
    target = out / "dpo" / "hf"
    if llm is not None:
        shutil.copytree(llm, target)
        return out
    from transformers import AutoModelForCausalLM, MistralConfig

    from moxin_core.api import ensure_embedded_tokenizer, load_tokenizer, save_model

    tokenizer_dir = ensure_embedded_tokenizer(root / "tokenizer", 512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MistralConfig(
        vocab_size=512, hidden_size=64, intermediate_size=224, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        sliding_window=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2))
    save_model(model, load_tokenizer(tokenizer_dir), target, tokenizer_dir)
    return out


def settings(steps: int, batch: int) -> list[str]:
    return [f"max_steps={steps}", f"micro_batch_size={batch}", "checkpoint_every=100000",
            "log_every=1", "vlm.evaluators=[]"]


def bare_run(out: Path, sets: list[str]) -> dict:
    registry = Registry()
    variant = resolve_variant(registry, VARIANT, sets=sets)
    stage = variant.stage(STAGE)
    hp = stage.hparams
    init = stage_start(registry, variant, stage, out)
    references = preset_references(registry, variant, stage, init, out)
    ref = resolve_model(registry, init)
    config = ref.family.bind_references(ref.preset.config, references)
    processor = ref.family.fit_processor(ref.family.load_processor(references["llm"]), config)
    objective = build_objective(registry, stage.objective, stage.objective_options)
    datamodule = build_datamodule(registry, stage.data, objective, processor, hp.seq_len,
                                  hp.micro_batch_size, hp.seed)
    loader = iter(datamodule.train_dataloader())
    pl.seed_everything(hp.seed, verbose=False)
    module = build_module(registry, init, objective, processor, hp, references=references)
    model = module.model
    objective.setup(module_context(module))
    objective.prepare_model(model)
    optimizer = build_optimizer(model, hp)
    scheduler = build_scheduler(optimizer, hp)
    tokens = images = 0
    seconds, last = 0.0, 0.0
    ENCODED["images"] = 0
    for step in range(hp.max_steps):
        batch = datamodule.on_before_batch_transfer(next(loader), 0)
        if step == 0:
            last = time.perf_counter()
        loss, _ = objective.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        now = time.perf_counter()
        if step >= SKIP:
            seconds += now - last
            tokens += objective.num_tokens(batch)
            images += int(batch["has_image"].sum())
        last = now
    return {"tokens_per_second": tokens / seconds, "images_per_second": images / seconds,
            "tokens_per_image": tokens / max(images, 1),
            "encoded_per_image": ENCODED["images"] / max(1, hp.max_steps * hp.micro_batch_size)}


def module_context(module):
    """The objective context ``moxin train`` gives (the objective freezes what it must)."""
    from moxin_core.objectives.context import ObjectiveContext

    return ObjectiveContext(module, module.processor, module.registry, tempfile.gettempdir(),
                            module.train_hparams)


def moxin_run(out: Path, sets: list[str], tokens_per_image: float) -> dict:
    shutil.rmtree(out / STAGE, ignore_errors=True)
    ENCODED["images"] = 0
    (result,) = train_variant(VARIANT, out, sets=sets)
    steps, batch = result.steps, int(next(s for s in sets if s.startswith("micro"))
                                     .split("=")[1])
    return {"tokens_per_second": result.tokens_per_second,
            "images_per_second": result.tokens_per_second / tokens_per_image,
            "encoded_per_image": ENCODED["images"] / max(1, steps * batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="runs/demo/dpo/hf",
                        help="the language model (a random tiny one when the folder is missing)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    count_vision_calls()
    llm = Path(args.llm) if Path(args.llm).is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        out = run_folder(llm, Path(tmp))
        sets = settings(args.steps, args.batch)
        bare, moxin = [], []
        for _ in range(args.repeats):
            bare.append(bare_run(out, sets))
            moxin.append(moxin_run(out, sets, bare[-1]["tokens_per_image"]))
    median = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
              for name, runs in (("bare", bare), ("moxin", moxin))}
    ratio = median["moxin"]["tokens_per_second"] / median["bare"]["tokens_per_second"]
    report = {"llm": str(llm) if llm else "random tiny LM", "steps": args.steps,
              "batch": args.batch, "bare": bare, "moxin": moxin, "median": median,
              "moxin_over_bare": ratio, "cpu_threads": torch.get_num_threads()}
    for name in ("bare", "moxin"):
        m = median[name]
        print(f"{name:>5}: {m['tokens_per_second']:,.0f} tokens/s, {m['images_per_second']:.1f} "
              f"images/s, images encoded per image {m['encoded_per_image']:.2f} "
              f"(median of {args.repeats})")
    print(f"moxin / bare tokens/s: {ratio:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
