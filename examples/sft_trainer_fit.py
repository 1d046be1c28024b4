"""Supervised fine-tuning with a plain ``lightning.Trainer(...).fit`` call.

The ``sft`` objective and the ``embedded_instructions`` data source come from
moxin-plugin-instruct, resolved by name; the Trainer is yours. Run from the repository root after
``make demo`` (or point ``--model`` at any HF folder whose tokenizer carries the chat template):

    .venv/bin/python examples/sft_trainer_fit.py --model runs/demo/enhance/hf --max-steps 50

Other chat data: ``--data 'files:data/*.jsonl'`` reads records with a ``messages`` field.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl

from moxin_core.api import (DataSpec, HyperParameters, Registry, build_datamodule, build_module,
                            build_objective, load_tokenizer, save_model)


def data_spec(text: str) -> DataSpec:
    if text == "embedded":
        return DataSpec("embedded_instructions", 1.0, {"split": "train", "num_examples": 20000})
    source, _, paths = text.partition(":")
    return DataSpec(source, 1.0, {"paths": paths} if source == "files" else {"path": paths})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/enhance/hf", help="HF folder or hub id")
    parser.add_argument("--data", default="embedded",
                        help="'embedded', 'files:GLOB' or 'hf_dataset:PATH'")
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reduction", default="sum", choices=["sum", "mean"])
    parser.add_argument("--out", default="runs/sft-trainer-fit")
    args = parser.parse_args()

    registry = Registry()
    tokenizer = load_tokenizer(args.model)
    hparams = HyperParameters(max_steps=args.max_steps, seq_len=args.seq_len,
                              micro_batch_size=args.batch_size, lr=args.lr, schedule="linear",
                              warmup_ratio=0.03, weight_decay=0.0)
    objective = build_objective(registry, "sft", {"reduction": args.reduction})
    datamodule = build_datamodule(registry, [data_spec(args.data)], objective, tokenizer,
                                  hparams.seq_len, hparams.micro_batch_size)
    pl.seed_everything(hparams.seed)
    module = build_module(registry, args.model, objective, tokenizer, hparams)

    trainer = pl.Trainer(max_steps=hparams.max_steps, accelerator="cpu", precision="32-true",
                         gradient_clip_val=hparams.grad_clip, default_root_dir=args.out,
                         log_every_n_steps=5)
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    print(f"final loss {metrics['train/loss']:.3f} (per assistant token "
          f"{metrics['train/token_loss']:.3f})")
    save_model(module.model, tokenizer, Path(args.out) / "hf", args.model)  # a transformers folder


if __name__ == "__main__":
    main()
