"""Pretrain a Moxin-shaped model with a plain ``lightning.Trainer(...).fit`` call.

Everything is resolved by plugin name through moxin's public functions; the Trainer, its callbacks
and loggers are yours. Run from the repository root:

    .venv/bin/python examples/pretrain_trainer_fit.py --max-steps 50

It trains the embedded-corpus tokenizer on first use (into ``--out``/tokenizer), then pretrains the
``moxin-tiny`` preset on the ``embedded`` data source with the ``lm`` objective.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl

from moxin_core.api import (DataSpec, HyperParameters, Registry, build_datamodule, build_module,
                            build_objective, ensure_embedded_tokenizer, load_tokenizer,
                            resolve_model, save_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="moxin-tiny", help="preset, HF folder or hub id")
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="runs/trainer-fit")
    args = parser.parse_args()

    registry = Registry()  # every installed moxin plugin, built-ins included
    out = Path(args.out)
    ref = resolve_model(registry, args.model)  # a preset, a folder or a hub id
    vocab = ref.family.vocab_size(ref.config())
    tokenizer_dir = ensure_embedded_tokenizer(out / "tokenizer", vocab)
    tokenizer = load_tokenizer(tokenizer_dir)

    hparams = HyperParameters(max_steps=args.max_steps, seq_len=args.seq_len,
                              micro_batch_size=args.batch_size, lr=2e-3, warmup_steps=5)
    objective = build_objective(registry, "lm")
    datamodule = build_datamodule(registry, [DataSpec("embedded", 1.0, {"num_documents": 20000})],
                                  objective, tokenizer, hparams.seq_len, hparams.micro_batch_size)
    pl.seed_everything(hparams.seed)
    module = build_module(registry, args.model, objective, tokenizer, hparams)

    trainer = pl.Trainer(max_steps=hparams.max_steps, accelerator="cpu", precision="32-true",
                         gradient_clip_val=hparams.grad_clip, default_root_dir=out,
                         log_every_n_steps=5)
    trainer.fit(module, datamodule=datamodule)
    print(f"final loss {trainer.callback_metrics['train/loss']:.3f}")
    save_model(module.model, tokenizer, out / "hf", tokenizer_dir)  # a transformers folder


if __name__ == "__main__":
    main()
