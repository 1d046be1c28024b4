"""GRPO with a plain ``lightning.Trainer(...).fit`` call.

The ``grpo`` objective, the ``math`` reward, the ``embedded_problems`` prompts and the
``heldout-math`` evaluator come from moxin-plugin-reasoning. Each step samples ``--generations``
completions for each of ``--batch-size`` prompts, scores them with the math reward and updates the
policy with the clipped surrogate plus the k3 KL to a frozen copy of the starting model. Run on a
model that answers with ``\boxed{}`` (any chat model folder works), e.g. after ``make demo``:

    .venv/bin/moxin train moxin-tiny-reasoning --out runs/demo --stage reasoning-sft
    .venv/bin/python examples/grpo_trainer_fit.py --model runs/demo/reasoning-sft/hf --max-steps 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl

from moxin_core.api import (DataSpec, HyperParameters, Registry, build_datamodule, build_module,
                            build_objective, load_tokenizer, save_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/reasoning-sft/hf", help="HF folder or hub id")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--beta", type=float, default=0.001, help="KL coefficient (0: no reference)")
    parser.add_argument("--loss-type", default="grpo", choices=["grpo", "dr_grpo", "dapo"])
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval", type=int, default=0, help="held-out problems to score after")
    parser.add_argument("--out", default="runs/grpo-trainer-fit")
    args = parser.parse_args()

    registry = Registry()
    tokenizer = load_tokenizer(args.model)
    hparams = HyperParameters(max_steps=args.max_steps, seq_len=args.seq_len,
                              micro_batch_size=args.batch_size, lr=args.lr, schedule="constant",
                              weight_decay=0.0)
    objective = build_objective(registry, "grpo", {
        "num_generations": args.generations, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "beta": args.beta, "loss_type": args.loss_type,
        "rewards": {"math": 1.0}})
    data = DataSpec("embedded_problems", 1.0, {"split": "train", "num_examples": 20000})
    datamodule = build_datamodule(registry, [data], objective, tokenizer, hparams.seq_len,
                                  hparams.micro_batch_size)
    pl.seed_everything(hparams.seed)
    module = build_module(registry, args.model, objective, tokenizer, hparams)

    trainer = pl.Trainer(max_steps=hparams.max_steps, accelerator="cpu", precision="32-true",
                         gradient_clip_val=hparams.grad_clip, default_root_dir=args.out,
                         log_every_n_steps=5)
    trainer.fit(module, datamodule=datamodule)
    m = trainer.callback_metrics
    print(f"last step: reward {m['train/reward']:.3f}, groups without reward variance "
          f"{m['train/zero_std_groups']:.0%}, completion length "
          f"{m['train/completion/mean_length']:.1f}, generation "
          f"{m['train/generation/tokens_per_s']:,.0f} tokens/s")
    folder = save_model(module.model, tokenizer, Path(args.out) / "hf", args.model)
    if args.eval:
        scores = registry.get("evaluators", "heldout-math")(num=args.eval)(str(folder))
        print(f"held-out pass@1 {scores['pass@1']:.1%} on {scores['n']:.0f} problems")


if __name__ == "__main__":
    main()
