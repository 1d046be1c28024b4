"""GRPO steps/s against TRL's GRPOTrainer, with generation tokens/s beside the update time.

Run:  .venv/bin/python benchmarks/grpo_step.py [--quick] [--repeats N] [--json PATH]

Same model and settings on both sides: the ``moxin-tiny`` preset (random init, seed 0), the
project's embedded-corpus tokenizer (vocab 2048), prompts from the ``embedded_problems`` train
split rendered with the Moxin chat template and DeepScaleR's boxed-answer instruction, 8 prompts
per step, G = 8 completions each (64 per step), at most 32 new tokens, temperature 1.0, the
``math`` reward, KL to a frozen reference with coefficient 0.04 (both keep a reference model),
one policy update per rollout, AdamW lr 1e-5, fp32, 2 threads, transformers ``generate`` with the
KV cache on both sides. *moxin*: ``lightning.Trainer.fit`` on ``MoxinModule`` with the ``grpo``
objective (what ``moxin train`` runs). *TRL*: ``GRPOTrainer`` (``use_vllm=False``).

Steps/s is measured from the end of step 2 to the end of the last step (a step = sample, score,
reference and policy passes, optimizer step). Runs are interleaved (moxin, TRL, moxin, ...); we
report medians and the ratio moxin / TRL, and for moxin the share of a step spent generating.
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

SKIP = 2
PROMPTS, G, NEW_TOKENS, TEMPERATURE, BETA, LR, SEQ_LEN = 8, 8, 32, 1.0, 0.04, 1e-5, 128
MODEL = "moxin-tiny"


class StepClock(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.generation: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())
        metrics = trainer.callback_metrics
        tokens = PROMPTS * G * float(metrics["train/completion/mean_length"])
        self.generation.append(tokens / float(metrics["train/generation/tokens_per_s"]))


def steps_per_second(times: list[float]) -> float:
    return (len(times) - 1 - SKIP) / (times[-1] - times[SKIP])


def _model(tokenizer):
    ref = resolve_model(Registry(), MODEL)
    torch.manual_seed(0)
    return ref.family.build(ref.family.fit_config(ref.preset.config, tokenizer))


def moxin_grpo(tokenizer_dir: Path, steps: int, root: Path) -> dict:
    registry = Registry()
    tokenizer = load_tokenizer(tokenizer_dir)
    hp = HyperParameters(max_steps=steps, seq_len=SEQ_LEN, micro_batch_size=PROMPTS, lr=LR,
                         schedule="constant", weight_decay=0.0, precision="32-true")
    objective = build_objective(registry, "grpo", {
        "num_generations": G, "max_new_tokens": NEW_TOKENS, "temperature": TEMPERATURE,
        "beta": BETA, "rewards": {"math": 1.0}})
    data = DataSpec("embedded_problems", 1.0, {"num_examples": 20000})
    datamodule = build_datamodule(registry, [data], objective, tokenizer, SEQ_LEN, PROMPTS)
    module = build_module(registry, MODEL, objective, tokenizer, hp)  # seed 0, as _model
    clock = StepClock()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", precision="32-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, gradient_clip_val=1.0, callbacks=[clock],
                         limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root)
    trainer.fit(module, datamodule=datamodule)
    rate = steps_per_second(clock.times)
    generation = statistics.mean(clock.generation[SKIP + 1:])
    return {"steps_per_second": rate, "generation_seconds": generation,
            "update_seconds": 1 / rate - generation,
            "generation_tokens_per_second":
                float(trainer.callback_metrics["train/generation/tokens_per_s"])}


def trl_grpo(tokenizer_dir: Path, steps: int, root: Path) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from moxin_plugin_reasoning.data import EmbeddedProblems
    from moxin_plugin_reasoning.grpo import PromptBuilder
    from moxin_plugin_reasoning.rewards import MathReward

    datasets.disable_progress_bar()
    tokenizer = load_tokenizer(tokenizer_dir)
    builder = PromptBuilder(tokenizer, budget=SEQ_LEN)
    records = [r for r, _ in EmbeddedProblems(num_examples=PROMPTS * steps * 2).iter_from(None)]
    dataset = datasets.Dataset.from_dict({
        "prompt": [builder.messages(r["problem"]) for r in records],
        "answer": [r["answer"] for r in records]})
    args = GRPOConfig(output_dir=str(root), max_steps=steps, per_device_train_batch_size=PROMPTS * G,
                      num_generations=G, max_completion_length=NEW_TOKENS,
                      temperature=TEMPERATURE, beta=BETA, learning_rate=LR,
                      lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
                      loss_type="grpo", bf16=False, use_cpu=True, report_to="none",
                      save_strategy="no", logging_strategy="no", disable_tqdm=True,
                      dataloader_num_workers=0, seed=0)
    reward = MathReward()

    def math_reward(completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return reward([], texts, answer=answer)

    # TRL loads its reference model from the policy's folder
    folder = root / "init"
    _model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    trainer = GRPOTrainer(model=str(folder), reward_funcs=math_reward, args=args,
                          train_dataset=dataset, processing_class=tokenizer)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    return {"steps_per_second": steps_per_second(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and one round (~2 min)")
    ap.add_argument("--repeats", type=int, help="interleaved rounds (default 3; quick 1)")
    ap.add_argument("--steps", type=int, help="steps per run (default 12; quick 5)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (5 if args.quick else 12)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    cache = Path(tempfile.gettempdir()) / "moxin-bench-tokenizer-2048"
    tokenizer_dir = ensure_embedded_tokenizer(cache, 2048)
    runs: dict[str, list[dict]] = {"moxin": [], "trl": []}
    for round_ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(open(os.devnull, "w")):
            root = Path(tmp)
            runs["moxin"].append(moxin_grpo(tokenizer_dir, steps, root / "m"))
            runs["trl"].append(trl_grpo(tokenizer_dir, steps, root / "t"))
        print(f"round {round_ + 1}/{repeats}: moxin {runs['moxin'][-1]['steps_per_second']:.3f} "
              f"steps/s, TRL {runs['trl'][-1]['steps_per_second']:.3f} steps/s", flush=True)

    med = {k: statistics.median(r["steps_per_second"] for r in v) for k, v in runs.items()}
    gen = statistics.median(r["generation_seconds"] for r in runs["moxin"])
    upd = statistics.median(r["update_seconds"] for r in runs["moxin"])
    tps = statistics.median(r["generation_tokens_per_second"] for r in runs["moxin"])
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads()},
        "settings": {"model": MODEL, "prompts": PROMPTS, "num_generations": G,
                     "max_new_tokens": NEW_TOKENS, "beta": BETA, "steps": steps,
                     "repeats": repeats},
        "runs": runs, "medians": med, "ratio": med["moxin"] / med["trl"],
        "moxin_generation_seconds": gen, "moxin_update_seconds": upd,
        "moxin_generation_tokens_per_second": tps,
    }
    print(f"\nGRPO steps/s (median of {repeats}; {PROMPTS} prompts x G={G}, {NEW_TOKENS} new "
          f"tokens, KL {BETA}; steps {SKIP + 1}..{steps})")
    print(f"  {'moxin grpo':<26} {med['moxin']:>7.3f}")
    print(f"  {'TRL GRPOTrainer':<26} {med['trl']:>7.3f}")
    print(f"  moxin / TRL = {report['ratio']:.2f}  (target >= 1.0)")
    print(f"  moxin step: generation {gen:.2f} s ({tps:,.0f} tokens/s), "
          f"rewards + reference + update {upd:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
