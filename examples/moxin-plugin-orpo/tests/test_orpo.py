"""moxin-plugin-orpo, a third-party plugin: its loss equals TRL's ORPOTrainer's on the same
batch, it keeps moxin_core.testing's objective contracts, and installed with pip it trains with
`moxin train` (raising held-out preference accuracy) and with a plain Trainer.fit script."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moxin_core.testing import check_objective, subprocess_env
from moxin_plugin_orpo.orpo import ORPO

EXAMPLE = Path(__file__).resolve().parents[1]
REPO = EXAMPLE.parents[1]

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Mia has 4 apples and buys 5. How many?"]
CHOSEN = ["2 + 3 = 5. The answer is 5.", "Blue.", "4 + 5 = 9. The answer is 9."]
REJECTED = ["2 + 3 = 7. The answer is 7.", "Table.", "4 + 5 = 8. The answer is 8."]


def _records() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": p}],
             "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]}
            for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)]


def test_the_loss_equals_trl_orpo_trainer(moxin_tokenizer, moxin_tiny_model, tmp_path):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    records = _records()
    dataset = Dataset.from_dict({k: [r[k] for r in records] for k in ("prompt", "chosen",
                                                                      "rejected")})
    args = ORPOConfig(output_dir=str(tmp_path), beta=0.25, per_device_train_batch_size=3,
                      max_length=256, bf16=False, use_cpu=True,
                      report_to="none", save_strategy="no", disable_tqdm=True, seed=0)
    tokenizer = copy.deepcopy(moxin_tokenizer)
    tokenizer.pad_token = tokenizer.eos_token  # TRL pads with it; padding is masked either way
    trainer = ORPOTrainer(model=moxin_tiny_model(), args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(records))]
    trl_batch = trainer.data_collator(rows)
    model = moxin_tiny_model()
    with torch.no_grad():
        trl_loss, _ = trainer.get_batch_loss_metrics(model, trl_batch)
        # the same batch in moxin's layout: chosen rows, then rejected rows, right-padded; the
        # reply mask is where TRL's labels score a token
        sides = [(trl_batch[f"{s}_input_ids"], trl_batch[f"{s}_attention_mask"],
                  trl_batch[f"{s}_labels"]) for s in ("chosen", "rejected")]
        width = max(ids.shape[1] for ids, _, _ in sides)

        def padded(tensor, value):
            return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

        batch = {"input_ids": torch.cat([padded(ids, 0) for ids, _, _ in sides]),
                 "attention_mask": torch.cat([padded(mask, 0) for _, mask, _ in sides]),
                 "completion_mask": torch.cat([padded(labels, -100) != -100
                                               for _, _, labels in sides])}
        ours, metrics = ORPO(beta=0.25).loss(model, batch)
    assert abs(ours.item() - trl_loss.item()) < 1e-5, (ours.item(), trl_loss.item())


def test_orpo_keeps_the_objective_contracts(moxin_tokenizer, moxin_tiny_model):
    records = _records() * 8
    check_objective(ORPO, moxin_tiny_model, moxin_tokenizer, records, seq_len=128)


def _env(target: Path) -> dict:
    return subprocess_env({"PYTHONPATH": str(target)})  # moxin_core.testing's child environment


@pytest.mark.slow
def test_installed_it_trains_with_moxin_train_and_a_trainer_fit_script(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
                   check=True, capture_output=True, text=True)
    env = _env(target)

    def moxin(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moxin_core.cli", *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)

    listed = moxin("variants", "--json")
    assert listed.returncode == 0 and "moxin-tiny-orpo" in listed.stdout, listed.stderr
    out = tmp_path / "run"
    base = moxin("train", "moxin-tiny-base", "--out", str(out), "--stage", "pretrain-128",
                 "--max-steps", "40", "--set", "pretrain-128.model=moxin-nano",
                 "--set", "tokenizer=embedded", "--set", "checkpoint_every=100")
    assert base.returncode == 0, base.stderr[-3000:]
    orpo = moxin("train", "moxin-tiny-orpo", "--out", str(out), "--max-steps", "150",
                 "--set", "lr=2e-3", "--set", f"orpo.model={out / 'pretrain-128' / 'hf'}",
                 "--set", "orpo.evaluators=[{name: preference-accuracy, num: 200}]")
    assert orpo.returncode == 0, orpo.stderr[-3000:]
    scores = json.loads((out / "orpo" / "manifest.json").read_text())
    before, after = scores["eval_start"]["preference-accuracy"], scores["eval"][
        "preference-accuracy"]
    print(f"held-out preference accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}")
    # measured: 0.425 -> 0.54 (200 pairs: one standard error is 3.5 points), margin -0.07 -> 0.07
    assert after["accuracy"] >= before["accuracy"] + 0.07, (before, after)
    assert after["margin"] > before["margin"] + 0.05, (before, after)

    # the objective swapped into another variant's stage, no variant of its own needed
    swapped = moxin("train", "moxin-tiny-instruct", "--out", str(tmp_path / "swap"), "--stage",
                    "dpo", "--max-steps", "2", "--set", "dpo.objective=orpo",
                    "--set", "dpo.objective_options.beta=0.2", "--set", "dpo.evaluators=[]",
                    "--set", f"dpo.model={out / 'orpo' / 'hf'}")
    assert swapped.returncode == 0, swapped.stderr[-3000:]
    config = (tmp_path / "swap" / "dpo" / "config.yaml").read_text()
    assert "objective: orpo" in config and "beta: 0.2" in config

    script = subprocess.run([sys.executable, str(EXAMPLE / "train_orpo.py"), "--model",
                             str(out / "orpo" / "hf"), "--max-steps", "3", "--out",
                             str(tmp_path / "fit")], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=900)
    assert script.returncode == 0, script.stderr[-3000:]
    assert "final loss" in script.stdout
    assert (tmp_path / "fit" / "hf" / "model.safetensors").is_file()
