"""DPO with a plain ``lightning.Trainer(...).fit`` call.

The ``dpo`` objective and the ``embedded_preferences`` data source come from
moxin-plugin-instruct. The reference is the starting model: ``--reference precomputed`` runs it
once over the pairs training will see and stores the log-probs in ``--out`` (reused when the run
is resumed), ``--reference model`` keeps a frozen copy. Run after ``make demo`` (or on the output
of ``examples/sft_trainer_fit.py``):

    .venv/bin/python examples/dpo_trainer_fit.py --model runs/demo/sft/hf --max-steps 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl

from moxin_core.api import (DataSpec, HyperParameters, Registry, build_datamodule, build_module,
                            build_objective, load_tokenizer, save_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/sft/hf", help="HF folder or hub id")
    parser.add_argument("--loss-type", default="dpo_norm", choices=["sigmoid", "dpo_norm", "ipo"])
    parser.add_argument("--beta", type=float, default=None, help="default: 5 for dpo_norm, else 0.1")
    parser.add_argument("--reference", default="precomputed", choices=["precomputed", "model"])
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--out", default="runs/dpo-trainer-fit")
    args = parser.parse_args()

    registry = Registry()
    tokenizer = load_tokenizer(args.model)
    hparams = HyperParameters(max_steps=args.max_steps, seq_len=args.seq_len,
                              micro_batch_size=args.batch_size, lr=args.lr, schedule="linear",
                              warmup_ratio=0.1, weight_decay=0.0)
    objective = build_objective(registry, "dpo", {"loss_type": args.loss_type, "beta": args.beta,
                                                  "reference": args.reference})
    data = DataSpec("embedded_preferences", 1.0, {"split": "train", "num_examples": 5000})
    datamodule = build_datamodule(registry, [data], objective, tokenizer, hparams.seq_len,
                                  hparams.micro_batch_size)
    pl.seed_everything(hparams.seed)
    module = build_module(registry, args.model, objective, tokenizer, hparams)

    trainer = pl.Trainer(max_steps=hparams.max_steps, accelerator="cpu", precision="32-true",
                         gradient_clip_val=hparams.grad_clip, default_root_dir=args.out,
                         log_every_n_steps=5)
    trainer.fit(module, datamodule=datamodule)
    m = trainer.callback_metrics
    print(f"final loss {m['train/loss']:.3f}, reward accuracy {m['train/rewards/accuracy']:.2f}, "
          f"margin {m['train/rewards/margin']:.3f}")
    save_model(module.model, tokenizer, Path(args.out) / "hf", args.model)  # a transformers folder


if __name__ == "__main__":
    main()
