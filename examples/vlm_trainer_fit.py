"""A vision-language model trained with a plain ``lightning.Trainer(...).fit`` call.

The ``vlm`` model family, objective, ``embedded_shapes`` data and ``heldout-shapes`` evaluator
come from moxin-plugin-vlm. The ``moxin-tiny-vlm`` preset (a tiny ViT and a gelu-mlp projector)
is built on the language model in ``--llm``, as ``moxin train`` builds it on the instruct run's
model, then trained on pictures of coloured shapes. After ``make demo``:

    .venv/bin/python examples/vlm_trainer_fit.py --llm runs/demo/dpo/hf --max-steps 400 --eval 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl

from moxin_core.api import (DataSpec, HyperParameters, Registry, build_datamodule, build_module,
                            build_objective, resolve_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="runs/demo/dpo/hf", help="language model folder")
    parser.add_argument("--preset", default="moxin-tiny-vlm")
    parser.add_argument("--trainable", default="full-finetune",
                        choices=["align", "finetune", "full-finetune"])
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval", type=int, default=0, help="held-out questions to score after")
    parser.add_argument("--out", default="runs/vlm-trainer-fit")
    args = parser.parse_args()

    registry = Registry()
    preset = resolve_model(registry, args.preset)
    family, references = preset.family, {"llm": args.llm}
    config = family.bind_references(preset.preset.config, references)
    processor = family.fit_processor(family.load_processor(args.llm), config)
    hparams = HyperParameters(max_steps=args.max_steps, seq_len=96,
                              micro_batch_size=args.batch_size, lr=args.lr, weight_decay=0.0,
                              schedule="cosine", warmup_ratio=0.05)
    objective = build_objective(registry, "vlm", {"trainable": args.trainable})
    data = DataSpec("embedded_shapes", 1.0, {"split": "train", "num_examples": 50000,
                                             "kinds": ["colour", "shape", "count", "position"]})
    datamodule = build_datamodule(registry, [data], objective, processor, hparams.seq_len,
                                  hparams.micro_batch_size)
    pl.seed_everything(hparams.seed)
    module = build_module(registry, args.preset, objective, processor, hparams,
                          references=references)

    trainer = pl.Trainer(max_steps=hparams.max_steps, accelerator="cpu", precision="32-true",
                         gradient_clip_val=hparams.grad_clip, default_root_dir=args.out,
                         log_every_n_steps=10)
    trainer.fit(module, datamodule=datamodule)
    print(f"last step: loss {trainer.callback_metrics['train/loss']:.3f}")
    folder = family.save(module.model, processor, Path(args.out) / "hf")
    print(f"saved the VLM to {folder}")
    if args.eval:
        scores = registry.get("evaluators", "heldout-shapes")(num=args.eval)(str(folder))
        print(f"held-out shapes questions: {scores['accuracy']:.0%} right, chance "
              f"{scores['chance']:.0%} ({scores['n']:.0f} questions)")


if __name__ == "__main__":
    main()
