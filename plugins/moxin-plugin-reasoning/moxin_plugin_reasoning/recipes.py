"""The reasoning variants: SFT on reasoning traces, then GRPO with verifiable rewards.

``moxin-reasoning`` (DESIGN.md §2, DeepScaleR on verl): from Moxin-7B-Instruct (hub id; ``--set
reasoning-sft.model=variant:moxin-instruct`` starts from your own instruct run in the same
``--out``), SFT on maths reasoning traces (OpenR1-Math's ``messages``), then GRPO on DeepScaleR's
40k problems (``agentica-org/DeepScaleR-Preview-Dataset``, fields ``problem``/``answer`` as they
are): 8 rollouts per prompt at temperature 0.6, lr 1e-6, KL *loss* to the reference with the k3
estimator and coefficient 0.001, 64 prompts per step (8 per GPU x 8 GPUs), binary ``math``
reward, responses up to 8K tokens and then 16K (two stages, the second from the first). verl
averages the policy loss over every token of the batch, which is ``loss_type: dapo`` here.

``moxin-tiny-reasoning`` runs the same two stages on a CPU in minutes from ``moxin-tiny-instruct``'s
final model in the same run folder, on the embedded problems; ``heldout-math`` runs after each
stage, so the GRPO stage's gain over its starting checkpoint is in the two ``eval.json`` files.
"""

from __future__ import annotations

from moxin_core.api import PREVIOUS, DataSpec, HyperParameters, Stage, Variant

REASONING_TRACES = DataSpec("hf_dataset", 1.0, {"path": "open-r1/OpenR1-Math-220k"})
DEEPSCALER = DataSpec("hf_dataset", 1.0, {"path": "agentica-org/DeepScaleR-Preview-Dataset"})
PROMPTS_PER_STEP = 64


def _gpu(**changes) -> HyperParameters:
    base = dict(micro_batch_size=8, grad_accum=1, devices=8, accelerator="gpu", strategy="fsdp",
                precision="bf16-mixed", weight_decay=0.0, schedule="constant", grad_clip=1.0,
                checkpoint_every=50, keep_checkpoints=2, log_every=1)
    base.update(changes)
    return HyperParameters(**base)


def _grpo_options(max_new_tokens: int) -> dict:
    return {"num_generations": 8, "temperature": 0.6, "max_new_tokens": max_new_tokens,
            "beta": 0.001, "loss_type": "dapo", "scale_rewards": "group",
            "epsilon_low": 0.2, "epsilon_high": 0.2, "rewards": {"math": 1.0}}


def moxin_reasoning() -> Variant:
    """Moxin-7B-Reasoning: reasoning SFT, then GRPO at 8K and 16K response tokens."""
    return Variant(
        name="moxin-reasoning",
        description="Moxin-7B-Reasoning: SFT on maths reasoning traces, then DeepScaleR GRPO "
                    "(G=8, T=0.6, lr 1e-6, k3 KL loss 0.001, 64 prompts/step, 8K then 16K).",
        stages=[
            Stage("reasoning-sft", "sft", [REASONING_TRACES], model="moxin-org/moxin-instruct-7b",
                  objective_options={"reduction": "sum"},
                  hparams=_gpu(micro_batch_size=2, seq_len=16384, lr=5e-6, warmup_ratio=0.03,
                               schedule="linear", max_steps=2 * 93_700 // 128, grad_accum=8),
                  description="SFT on maths reasoning traces."),
            Stage("grpo-8k", "grpo", [DEEPSCALER], model=PREVIOUS,
                  objective_options=_grpo_options(8192),
                  hparams=_gpu(seq_len=8192 + 1024, lr=1e-6, max_steps=1000),
                  description="GRPO on DeepScaleR problems, 8K-token responses."),
            Stage("grpo-16k", "grpo", [DEEPSCALER], model=PREVIOUS,
                  objective_options=_grpo_options(16384),
                  hparams=_gpu(seq_len=16384 + 1024, lr=1e-6, max_steps=500),
                  description="GRPO continued with 16K-token responses."),
        ],
    )


def _tiny(**changes) -> HyperParameters:
    base = dict(micro_batch_size=8, grad_accum=1, accelerator="cpu", devices=1,
                precision="32-true", weight_decay=0.0, schedule="constant", grad_clip=1.0,
                checkpoint_every=25, keep_checkpoints=2, log_every=1)
    base.update(changes)
    return HyperParameters(**base)


#: the tiny recipe's problems: two operations ("What is 6 * 7 + 5?"), where working in steps pays
TINY_LEVELS = [3]
#: held-out level-3 problems (278 distinct questions exist): one standard error ~3 points
TINY_EVAL = {"name": "heldout-math", "levels": TINY_LEVELS, "num": 250}


def moxin_tiny_reasoning() -> Variant:
    """Reasoning SFT then GRPO at tiny scale on the embedded problems.

    The SFT traces answer half the problems straight away (``The answer is \\boxed{N}.``) and
    work the other half in two steps first; the SFT model does either, and greedy decoding often
    takes the direct answer, which a 4.5M-parameter model gets right far less often. GRPO
    rewards the correct answers, and so the working: held-out greedy accuracy rises because the
    policy learns to reason before answering, the effect GRPO has at scale in miniature.
    """
    return Variant(
        name="moxin-tiny-reasoning",
        description="moxin-tiny reasoning SFT then GRPO on the embedded maths problems, "
                    "starting from a moxin-tiny-instruct run in the same --out.",
        stages=[
            Stage("reasoning-sft", "sft",
                  [DataSpec("embedded_reasoning", 1.0,
                            {"split": "train", "num_examples": 20000, "levels": TINY_LEVELS,
                             "direct_share": 0.5})],
                  model="variant:moxin-tiny-instruct", objective_options={"reduction": "sum"},
                  hparams=_tiny(seq_len=256, lr=2e-3, warmup_ratio=0.05, schedule="linear",
                                max_steps=400),
                  evaluators=[dict(TINY_EVAL)],
                  description="SFT on two-step problems, half answered directly, half worked "
                              "before the \\boxed{answer}."),
            Stage("grpo", "grpo",
                  # the prompts in another order than the SFT stage's (seed 1); the held-out
                  # split, never trained on, measures what the stage changes
                  [DataSpec("embedded_problems", 1.0,
                            {"split": "train", "seed": 1, "num_examples": 20000,
                             "levels": TINY_LEVELS})],
                  model=PREVIOUS,
                  objective_options={"num_generations": 8, "temperature": 0.6,
                                     "max_new_tokens": 40, "beta": 0.001, "loss_type": "grpo",
                                     "rewards": {"math": 1.0}},
                  hparams=_tiny(micro_batch_size=16, seq_len=128, lr=3e-5, max_steps=40),
                  evaluators=[dict(TINY_EVAL)],
                  description="GRPO with the math reward on the same kind of problems."),
        ],
    )


VARIANTS = {"moxin-reasoning": moxin_reasoning, "moxin-tiny-reasoning": moxin_tiny_reasoning}
