"""SFT tokens/s against TRL's SFTTrainer, and DPO time per step with a precomputed vs live reference.

Run:  .venv/bin/python benchmarks/instruct_throughput.py [--quick] [--repeats N] [--json PATH]

Same model, data and settings on both sides: the ``moxin-tiny`` preset (random init, seed 0), the
project's embedded-corpus tokenizer (vocab 2048), the first conversations of the
``embedded_instructions`` train split, max length 256, 8 sequences per step, AdamW lr 1e-3 with a
linear schedule, fp32, loss on assistant tokens only, 2 threads.

1. SFT tokens/s. *moxin*: ``lightning.Trainer.fit`` on ``MoxinModule`` with the ``sft`` objective
   (conversations packed into blocks of 256, positions restarting per conversation) streamed by
   ``MoxinDataModule``: the path ``moxin train`` takes. *TRL*: ``SFTTrainer`` with
   ``assistant_only_loss=True`` (the Moxin template with ``{% generation %}`` markers, which TRL
   needs to find assistant tokens; same ids), in its two loss-equivalent layouts: one padded
   conversation per row (``packing=False``), and best-fit packing (``packing=True``, which TRL runs
   padding-free). Tokens/s counts the real (non-padding) tokens each step feeds the model, over
   wall time between step ends, first 2 steps left out; data loading and the optimizer step are
   inside the timing on both sides. Runs are interleaved (moxin, TRL padded, TRL packed, ...) and
   we report medians and the ratio moxin / best TRL layout.
2. DPO seconds per step, ``reference="precomputed"`` vs ``reference="model"`` (a frozen copy run
   on every batch), 8 pairs per step from ``embedded_preferences``, ``dpo_norm``; the one-off
   precompute pass is timed separately (it runs before the first step and is not a step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from moxin_core.api import (DataSpec, HyperParameters, Registry, build_datamodule,  # noqa: E402
                            build_module, build_objective, ensure_embedded_tokenizer,
                            load_tokenizer, resolve_model)
from moxin_core.tokenizer import CHAT_TEMPLATE  # noqa: E402

SKIP = 2
SEQ_LEN, BATCH, LR = 256, 8, 1e-3
MODEL = "moxin-tiny"
GENERATION_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{ '<|assistant|>\\n' + message['content'] + '<|endoftext|>' }}",
    "{{ '<|assistant|>\\n' }}{%- generation -%}{{ message['content'] + '<|endoftext|>' }}"
    "{%- endgeneration -%}")


class StepClock(pl.Callback):
    """Wall time at each step end and tokens fed per step (moxin side)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(module.objective.num_tokens(batch))


def rate(times: list[float], tokens: list[int]) -> float:
    return sum(tokens[SKIP + 1:]) / (times[-1] - times[SKIP])


def seconds_per_step(times: list[float]) -> float:
    return (times[-1] - times[SKIP]) / (len(times) - 1 - SKIP)


def _trainer(steps: int, clock: pl.Callback) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", precision="32-true", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, gradient_clip_val=1.0, callbacks=[clock],
                      limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=clock.root)


def moxin_sft(tokenizer_dir: Path, steps: int, root: Path) -> dict:
    registry = Registry()
    tokenizer = load_tokenizer(tokenizer_dir)
    hp = HyperParameters(max_steps=steps, seq_len=SEQ_LEN, micro_batch_size=BATCH, lr=LR,
                         schedule="linear", weight_decay=0.0, precision="32-true")
    objective = build_objective(registry, "sft", {"reduction": "sum"})
    data = DataSpec("embedded_instructions", 1.0, {"num_examples": 20000})
    datamodule = build_datamodule(registry, [data], objective, tokenizer, SEQ_LEN, BATCH)
    pl.seed_everything(0, verbose=False)
    module = build_module(registry, MODEL, objective, tokenizer, hp)
    clock = StepClock()
    clock.root = root
    _trainer(steps, clock).fit(module, datamodule=datamodule)
    return {"tokens_per_second": rate(clock.times, clock.tokens),
            "tokens_per_step": statistics.mean(clock.tokens)}


def trl_sft(tokenizer_dir: Path, steps: int, root: Path, packing: bool) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from moxin_plugin_instruct.data import EmbeddedInstructions

    datasets.disable_progress_bar()
    records = [r for r, _ in EmbeddedInstructions("train", num_examples=BATCH * steps * 5)
               .iter_from(None)]
    dataset = datasets.Dataset.from_dict({"messages": [r["messages"] for r in records]})
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.chat_template = GENERATION_TEMPLATE
    registry = Registry()
    torch.manual_seed(0)
    ref = resolve_model(registry, MODEL)
    model = ref.family.build(ref.family.fit_config(ref.preset.config, tokenizer))
    args = SFTConfig(output_dir=str(root), max_steps=steps, per_device_train_batch_size=BATCH,
                     learning_rate=LR, lr_scheduler_type="linear", weight_decay=0.0,
                     max_grad_norm=1.0, bf16=False, use_cpu=True, activation_checkpointing=False,
                     report_to="none", save_strategy="no", logging_strategy="no",
                     disable_tqdm=True, dataloader_num_workers=0, assistant_only_loss=True,
                     max_length=SEQ_LEN, packing=packing, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    fed: list[int] = []
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        fed.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch
                   else int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    return {"tokens_per_second": rate(times, fed[: len(times)]),
            "tokens_per_step": statistics.mean(fed[: len(times)])}


def moxin_dpo(tokenizer_dir: Path, steps: int, root: Path, reference: str) -> dict:
    registry = Registry()
    tokenizer = load_tokenizer(tokenizer_dir)
    hp = HyperParameters(max_steps=steps, seq_len=SEQ_LEN, micro_batch_size=BATCH, lr=1e-5,
                         schedule="linear", weight_decay=0.0, precision="32-true")
    objective = build_objective(registry, "dpo", {"loss_type": "dpo_norm", "reference": reference,
                                                  "reference_cache": str(root / "ref.pt")})
    data = DataSpec("embedded_preferences", 1.0, {"num_examples": 5000})
    datamodule = build_datamodule(registry, [data], objective, tokenizer, SEQ_LEN, BATCH)
    pl.seed_everything(0, verbose=False)
    module = build_module(registry, MODEL, objective, tokenizer, hp)
    clock = StepClock()
    clock.root = root
    precompute = {}
    original = type(objective)._precompute

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        result = original(self, *args, **kwargs)
        precompute["seconds"] = time.perf_counter() - started
        return result

    objective._precompute = timed.__get__(objective)
    _trainer(steps, clock).fit(module, datamodule=datamodule)
    times = clock.times
    if reference == "precomputed":  # the pass runs inside step 1, which SKIP leaves out anyway
        assert "seconds" in precompute
    return {"seconds_per_step": seconds_per_step(times),
            "precompute_seconds": precompute.get("seconds")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and one round (~2 min)")
    ap.add_argument("--repeats", type=int, help="interleaved rounds (default 3; quick 1)")
    ap.add_argument("--sft-steps", type=int, help="SFT steps per run (default 25; quick 6)")
    ap.add_argument("--dpo-steps", type=int, help="DPO steps per run (default 15; quick 5)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    sft_steps = args.sft_steps or (6 if args.quick else 25)
    dpo_steps = args.dpo_steps or (5 if args.quick else 15)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    cache = Path(tempfile.gettempdir()) / "moxin-bench-tokenizer-2048"
    tokenizer_dir = ensure_embedded_tokenizer(cache, 2048)
    runs: dict[str, list[dict]] = {"moxin": [], "trl_padded": [], "trl_packed": [],
                                   "dpo_precomputed": [], "dpo_live": []}
    for round_ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(open(os.devnull, "w")):
            root = Path(tmp)
            runs["moxin"].append(moxin_sft(tokenizer_dir, sft_steps, root / "m"))
            runs["trl_padded"].append(trl_sft(tokenizer_dir, sft_steps, root / "p", False))
            runs["trl_packed"].append(trl_sft(tokenizer_dir, sft_steps, root / "q", True))
            runs["dpo_precomputed"].append(moxin_dpo(tokenizer_dir, dpo_steps, root / "d1",
                                                     "precomputed"))
            runs["dpo_live"].append(moxin_dpo(tokenizer_dir, dpo_steps, root / "d2", "model"))
        print(f"round {round_ + 1}/{repeats}: " + ", ".join(
            f"{k} {v[-1].get('tokens_per_second', v[-1].get('seconds_per_step')):.3g}"
            for k, v in runs.items()), flush=True)

    med = {k: statistics.median(r.get("tokens_per_second", r.get("seconds_per_step", 0))
                                for r in v) for k, v in runs.items()}
    best_trl = max(med["trl_padded"], med["trl_packed"])
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads()},
        "settings": {"model": MODEL, "seq_len": SEQ_LEN, "batch": BATCH, "sft_steps": sft_steps,
                     "dpo_steps": dpo_steps, "repeats": repeats},
        "runs": runs, "medians": med,
        "sft_ratio_vs_best_trl": med["moxin"] / best_trl,
        "dpo_precomputed_over_live": med["dpo_precomputed"] / med["dpo_live"],
    }
    print("\nSFT tokens/s (median of %d; real tokens, steps %d..%d)" % (repeats, SKIP + 1, sft_steps))
    print(f"  {'moxin sft (packed)':<28} {med['moxin']:>9,.0f}")
    print(f"  {'TRL SFTTrainer (padded)':<28} {med['trl_padded']:>9,.0f}")
    print(f"  {'TRL SFTTrainer (packing)':<28} {med['trl_packed']:>9,.0f}")
    print(f"  moxin / best TRL = {report['sft_ratio_vs_best_trl']:.2f}  (target >= 1.0)")
    print("DPO seconds per step (median; 8 pairs)")
    print(f"  {'precomputed reference':<28} {med['dpo_precomputed']:>9.3f}   (one-off pass "
          f"{statistics.median(r['precompute_seconds'] for r in runs['dpo_precomputed']):.1f} s)")
    print(f"  {'live reference':<28} {med['dpo_live']:>9.3f}")
    print(f"  precomputed / live = {report['dpo_precomputed_over_live']:.2f}  (target <= 0.6)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
