"""The instruct variants: SFT then DPO, with the Tulu 3 8B hyper-parameters at full scale.

``moxin-instruct`` (DESIGN.md §2): SFT 2 epochs of the Tulu 3 SFT mixture at lr 5e-6, linear
schedule with warmup ratio 0.03, weight decay 0, max length 4096, effective batch 128, loss summed
over assistant tokens; then DPO with ``dpo_norm`` (beta 5) on the Tulu 3 8B preference mixture, lr
5e-7, linear with warmup ratio 0.1, 1 epoch, max length 2048, effective batch 128. Steps are
``epochs * examples / 128`` for the mixtures' published sizes (939,344 conversations; 272,898
pairs); the effective batch is ``micro_batch_size * grad_accum * devices`` = 2 * 8 * 8 GPUs. It
starts from the released base model; ``--set sft.model=variant:moxin-base`` starts from your own
base run in the same ``--out``.

``moxin-tiny-instruct`` runs the same two stages on a CPU in minutes: it starts from the final
model of ``moxin-tiny-base`` in the same run folder and trains on the embedded instruction and
preference data; held-out scores are printed after each stage.
"""

from __future__ import annotations

from moxin_core.api import PREVIOUS, DataSpec, HyperParameters, Stage, Variant

TULU3_SFT = DataSpec("hf_dataset", 1.0, {"path": "allenai/tulu-3-sft-mixture"})
TULU3_PREFERENCES = DataSpec("hf_dataset", 1.0,
                             {"path": "allenai/llama-3.1-tulu-3-8b-preference-mixture"})
EFFECTIVE_BATCH = 128


def _gpu(**changes) -> HyperParameters:
    base = dict(micro_batch_size=2, grad_accum=8, devices=8, accelerator="gpu", strategy="fsdp",
                precision="bf16-mixed", weight_decay=0.0, schedule="linear", grad_clip=1.0,
                checkpoint_every=500, keep_checkpoints=2, log_every=10)
    base.update(changes)
    return HyperParameters(**base)


def moxin_instruct() -> Variant:
    """Moxin-7B-Instruct: SFT then DPO (Tulu 3 recipe) on GPUs."""
    return Variant(
        name="moxin-instruct",
        description="Moxin-7B-Instruct: Tulu 3 SFT (2 epochs, summed loss) then length-"
                    "normalised DPO (beta 5).",
        stages=[
            Stage("sft", "sft", [TULU3_SFT], model="moxin-org/moxin-llm-7b",
                  objective_options={"reduction": "sum"},
                  hparams=_gpu(seq_len=4096, lr=5e-6, warmup_ratio=0.03,
                               max_steps=-(-2 * 939_344 // EFFECTIVE_BATCH)),
                  description="Supervised fine-tuning on the Tulu 3 SFT mixture."),
            Stage("dpo", "dpo", [TULU3_PREFERENCES], model=PREVIOUS,
                  objective_options={"loss_type": "dpo_norm", "beta": 5.0,
                                     "reference": "precomputed"},
                  hparams=_gpu(seq_len=2048, lr=5e-7, warmup_ratio=0.1,
                               max_steps=-(-272_898 // EFFECTIVE_BATCH)),
                  description="Length-normalised DPO on the Tulu 3 8B preference mixture."),
        ],
    )


def _tiny(**changes) -> HyperParameters:
    # fp32 on CPU: see moxin_core.recipes (bf16 is emulated on CPUs without AVX512-BF16/AMX)
    base = dict(micro_batch_size=8, grad_accum=1, accelerator="cpu", devices=1,
                precision="32-true", weight_decay=0.0, schedule="linear", grad_clip=1.0,
                checkpoint_every=50, keep_checkpoints=2, log_every=1)
    base.update(changes)
    return HyperParameters(**base)


TINY_SFT = DataSpec("embedded_instructions", 1.0, {"split": "train", "num_examples": 20000})
TINY_PREFERENCES = DataSpec("embedded_preferences", 1.0, {"split": "train", "num_examples": 5000})


def moxin_tiny_instruct() -> Variant:
    """SFT then DPO at tiny scale on the embedded data, from moxin-tiny-base's final model."""
    return Variant(
        name="moxin-tiny-instruct",
        description="moxin-tiny SFT then DPO on the embedded instruction and preference data, "
                    "starting from a moxin-tiny-base run in the same --out.",
        stages=[
            Stage("sft", "sft", [TINY_SFT], model="variant:moxin-tiny-base",
                  objective_options={"reduction": "sum"},
                  hparams=_tiny(seq_len=256, lr=2e-3, warmup_ratio=0.03, max_steps=300),
                  evaluators=["heldout-arithmetic"],
                  description="SFT on generated instructions (assistant tokens only)."),
            Stage("dpo", "dpo", [TINY_PREFERENCES], model=PREVIOUS,
                  objective_options={"loss_type": "dpo_norm", "beta": 5.0,
                                     "reference": "precomputed"},
                  hparams=_tiny(seq_len=256, lr=2e-5, warmup_ratio=0.1, max_steps=40),
                  evaluators=["heldout-arithmetic", "heldout-preferences"],
                  description="Length-normalised DPO on generated preference pairs."),
        ],
    )


VARIANTS = {"moxin-instruct": moxin_instruct, "moxin-tiny-instruct": moxin_tiny_instruct}
