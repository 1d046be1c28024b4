"""ORPO with a plain ``lightning.Trainer(...).fit`` call (moxin-plugin-orpo installed).

The ``orpo`` objective comes from this plugin, the ``embedded_preferences`` data source from
moxin-plugin-instruct; everything else is moxin's public API:

    python examples/moxin-plugin-orpo/train_orpo.py --model runs/demo/pretrain-256/hf --max-steps 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl

from moxin_core.api import (DataSpec, HyperParameters, Registry, build_datamodule, build_module,
                            build_objective, load_tokenizer, save_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/pretrain-256/hf", help="HF folder or hub id")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="runs/orpo-trainer-fit")
    args = parser.parse_args()

    registry = Registry()
    tokenizer = load_tokenizer(args.model)
    hparams = HyperParameters(max_steps=args.max_steps, seq_len=args.seq_len,
                              micro_batch_size=args.batch_size, lr=args.lr, schedule="linear",
                              warmup_ratio=0.1, weight_decay=0.0)
    objective = build_objective(registry, "orpo", {"beta": args.beta})
    data = DataSpec("embedded_preferences", 1.0, {"split": "train", "num_examples": 5000})
    datamodule = build_datamodule(registry, [data], objective, tokenizer, hparams.seq_len,
                                  hparams.micro_batch_size)
    pl.seed_everything(hparams.seed)
    module = build_module(registry, args.model, objective, tokenizer, hparams)

    trainer = pl.Trainer(max_steps=hparams.max_steps, accelerator="cpu", precision="32-true",
                         gradient_clip_val=hparams.grad_clip, default_root_dir=args.out,
                         log_every_n_steps=1, enable_checkpointing=False, logger=False)
    trainer.fit(module, datamodule=datamodule)
    m = trainer.callback_metrics
    print(f"final loss {m['train/loss']:.3f}, nll {m['train/nll']:.3f}, "
          f"preference accuracy in the batch {m['train/rewards/accuracy']:.2f}")
    save_model(module.model, tokenizer, Path(args.out) / "hf", args.model)


if __name__ == "__main__":
    main()
