"""`evaluators: [{name: lm-eval, ...}]` in a stage: the exported model scored when the stage ends,
and with every_n_steps the model in memory scored during training."""

from __future__ import annotations

import csv
import json

import pytest

from moxin_core.api import MoxinError, train_variant
from moxin_core.reporting import sha256_file

SETS = ["pretrain-128.model=moxin-nano", "seq_len=64", "micro_batch_size=4", "warmup_steps=1",
        "checkpoint_every=2", "log_every=1", "max_steps=4"]


def test_a_stage_scores_its_model_during_and_after_training(tmp_path):
    evaluators = ("pretrain-128.evaluators=[{name: lm-eval, suite: tiny, limit: 8, "
                  "every_n_steps: 2}]")
    (result,) = train_variant("moxin-tiny-base", tmp_path, stage="pretrain-128",
                              sets=[*SETS, evaluators])
    stage = tmp_path / "pretrain-128"
    scores = json.loads((stage / "eval.json").read_text())["lm-eval"]
    assert set(scores) == {"tiny-mc", "tiny-gen", "average"} and result.evals["lm-eval"] == scores
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    during = [json.loads(line) for line in (stage / "lm_eval_steps.jsonl").read_text().splitlines()]
    assert [row["step"] for row in during] == [2, 4]
    assert set(during[0]) == {"step", "tiny-mc", "tiny-gen", "average"}
    # the model at step 4 is the exported one: the same scores
    assert {k: v for k, v in during[-1].items() if k != "step"} == scores
    with open(stage / "logs" / "metrics.csv") as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("lm-eval/tiny-mc")]
    assert [int(row["step"]) for row in logged] == [2, 4]
    # scoring during training leaves the run as it was: the same weights without it
    plain = "pretrain-128.evaluators=[{name: lm-eval, suite: tiny, limit: 8}]"
    train_variant("moxin-tiny-base", tmp_path / "plain", stage="pretrain-128", sets=[*SETS, plain])
    assert sha256_file(stage / "hf" / "model.safetensors") == \
        sha256_file(tmp_path / "plain" / "pretrain-128" / "hf" / "model.safetensors")


def test_bad_lm_eval_options_fail_before_training(tmp_path):
    with pytest.raises(MoxinError, match=r"Unknown suite 'huge'"):
        train_variant("moxin-tiny-base", tmp_path, stage="pretrain-128",
                      sets=[*SETS, "pretrain-128.evaluators=[{name: lm-eval, suite: huge}]"])
    assert not (tmp_path / "pretrain-128" / "checkpoints").exists()
    with pytest.raises(MoxinError, match=r"Evaluator 'lm-eval'.*'shots'.*accepts: suite, tasks"):
        train_variant("moxin-tiny-base", tmp_path, stage="pretrain-128",
                      sets=[*SETS, "pretrain-128.evaluators=[{name: lm-eval, shots: 3}]"])
