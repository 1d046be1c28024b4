"""Built-in variants: the Moxin-7B base recipe and the same three phases at tiny scale.

The 7B recipe follows the Moxin report: pretraining on a mixture of SlimPajama, DCLM-baseline and
the-stack-dedup at 2K context, then at 4K context, then a capability-enhancement phase on
higher-quality data. Mixture weights, batch sizes and learning rates below are moxin's defaults
where the report gives no number; override them with ``--set`` or ``--config``.
"""

from __future__ import annotations

from moxin_core.variants import PREVIOUS, DataSpec, HyperParameters, Stage, Variant

SLIMPAJAMA = DataSpec("hf_dataset", 0.45, {"path": "cerebras/SlimPajama-627B"})
DCLM = DataSpec("hf_dataset", 0.45, {"path": "mlfoundations/dclm-baseline-1.0"})
THE_STACK = DataSpec("hf_dataset", 0.10, {"path": "bigcode/the-stack-dedup", "text_field": "content"})


def _gpu_hparams(**changes) -> HyperParameters:
    base = dict(micro_batch_size=4, grad_accum=64, lr=3e-4, min_lr_ratio=0.1, schedule="cosine",
                warmup_steps=2000, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
                grad_clip=1.0, precision="bf16-mixed", checkpoint_every=1000, keep_checkpoints=3,
                log_every=10, accelerator="gpu", devices="auto", strategy="fsdp")
    base.update(changes)
    return HyperParameters(**base)


def moxin_base() -> Variant:
    """Moxin-7B base: three pretraining phases for a GPU cluster (FSDP)."""
    return Variant(
        name="moxin-base",
        description="Moxin-7B base pretraining: 2K context, 4K context, capability enhancement.",
        tokenizer="moxin-org/moxin-llm-7b",
        stages=[
            Stage("pretrain-2k", "lm", [SLIMPAJAMA, DCLM, THE_STACK], model="moxin-7b",
                  hparams=_gpu_hparams(seq_len=2048, max_steps=500_000),
                  description="Phase 1: the web/code mixture at 2K context."),
            Stage("pretrain-4k", "lm", [SLIMPAJAMA, DCLM, THE_STACK], model=PREVIOUS,
                  hparams=_gpu_hparams(seq_len=4096, micro_batch_size=2, grad_accum=128,
                                       max_steps=100_000, warmup_steps=500),
                  description="Phase 2: the same mixture at 4K context."),
            Stage("enhance", "lm", [DataSpec("hf_dataset", 1.0, {"path": "mlfoundations/dclm-baseline-1.0"})],
                  model=PREVIOUS,
                  hparams=_gpu_hparams(seq_len=4096, micro_batch_size=2, grad_accum=128,
                                       max_steps=20_000, lr=5e-5, warmup_steps=200),
                  description="Phase 3: capability enhancement on high-quality data "
                              "(point `data` at your curated set with --config)."),
        ],
    )


def _tiny_hparams(**changes) -> HyperParameters:
    # fp32: on CPUs without AVX512-BF16/AMX (such as the 2-core AVX2 machines moxin is tested
    # on) bf16 matmuls are emulated; a bf16-mixed step is ~19x slower; see docs/benchmarks.md.
    base = dict(micro_batch_size=8, grad_accum=1, lr=2e-3, min_lr_ratio=0.1, schedule="cosine",
                warmup_steps=10, weight_decay=0.1, grad_clip=1.0, precision="32-true",
                checkpoint_every=50, keep_checkpoints=2, log_every=1, accelerator="cpu",
                devices=1, strategy="auto")
    base.update(changes)
    return HyperParameters(**base)


TINY_TEXT = DataSpec("embedded", 1.0, {"seed": 0, "num_documents": 20000})
TINY_HIGH_QUALITY = DataSpec("embedded", 1.0, {"seed": 1, "num_documents": 5000,
                                               "mix": {"arithmetic": 0.6, "code": 0.4}})


def moxin_tiny_base() -> Variant:
    """The same three phases at tiny scale on the embedded corpus (a CPU, a few minutes)."""
    return Variant(
        name="moxin-tiny-base",
        description="moxin-tiny pretraining on the embedded corpus: short context, long context, "
                    "capability enhancement.",
        tokenizer="embedded",
        stages=[
            Stage("pretrain-128", "lm", [TINY_TEXT], model="moxin-tiny",
                  hparams=_tiny_hparams(seq_len=128, micro_batch_size=8, max_steps=250),
                  description="Phase 1: embedded corpus at 128 tokens of context."),
            Stage("pretrain-256", "lm", [TINY_TEXT], model=PREVIOUS,
                  hparams=_tiny_hparams(seq_len=256, micro_batch_size=4, max_steps=80, lr=1e-3,
                                        warmup_steps=4),
                  description="Phase 2: the same corpus at 256 tokens of context."),
            Stage("enhance", "lm", [TINY_HIGH_QUALITY], model=PREVIOUS,
                  hparams=_tiny_hparams(seq_len=256, micro_batch_size=4, max_steps=40, lr=5e-4,
                                        warmup_steps=2),
                  description="Phase 3: capability enhancement on arithmetic and code."),
        ],
    )


BUILTIN_VARIANTS = {"moxin-base": moxin_base, "moxin-tiny-base": moxin_tiny_base}
