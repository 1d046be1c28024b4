"""moxin-plugin-orpo's hooks: the ``orpo`` objective, the ``preference-accuracy`` evaluator and
the ``moxin-tiny-orpo`` variant."""

from __future__ import annotations

from moxin_core.api import DataSpec, HyperParameters, Stage, Variant, hookimpl

from moxin_plugin_orpo.evaluate import PreferenceAccuracy
from moxin_plugin_orpo.orpo import ORPO


def moxin_tiny_orpo() -> Variant:
    """ORPO straight from moxin-tiny-base's final model (no SFT stage: ORPO does both)."""
    hparams = HyperParameters(max_steps=60, micro_batch_size=8, seq_len=256, lr=1e-3,
                              schedule="linear", warmup_ratio=0.1, weight_decay=0.0,
                              precision="32-true", accelerator="cpu", devices=1,
                              checkpoint_every=50)
    data = DataSpec("embedded_preferences", 1.0, {"split": "train", "num_examples": 5000})
    return Variant(
        name="moxin-tiny-orpo",
        description="moxin-tiny ORPO on the embedded preference pairs, from a moxin-tiny-base "
                    "run in the same --out.",
        stages=[Stage("orpo", "orpo", [data], model="variant:moxin-tiny-base",
                      objective_options={"beta": 0.1}, hparams=hparams,
                      evaluators=["preference-accuracy"], evaluate_start=True,
                      description="ORPO: chosen-reply NLL plus the odds-ratio term.")])


@hookimpl
def moxin_objectives():
    return {"orpo": ORPO}


@hookimpl
def moxin_evaluators():
    return {"preference-accuracy": PreferenceAccuracy}


@hookimpl
def moxin_variants():
    return {"moxin-tiny-orpo": moxin_tiny_orpo}
