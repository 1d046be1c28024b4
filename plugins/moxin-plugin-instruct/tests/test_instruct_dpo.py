"""DPO: parity with TRL's DPOTrainer, record shapes, bad input, reference handling."""

from __future__ import annotations

import copy
import os

import lightning.pytorch as pl
import pytest
import torch

from moxin_core.errors import MoxinError
from moxin_plugin_instruct.dpo import DPO, PairBuilder, dpo_loss, pair_messages

from instruct_models import tiny_model

PROMPTS = ["Name a colour.", "Say hi.", "What is 2 + 3?"]
CHOSEN = ["blue", "hello there", "2 + 3 = 5. The answer is 5."]
REJECTED = ["table", "no", "2 + 3 = 7. The answer is 7."]


def _records() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": p}],
             "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]}
            for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)]


def _moxin_batch(objective: DPO, tokenizer) -> dict:
    builder = objective.example_builder(tokenizer, 256)
    return objective.collate([e for r in _records() for e in builder.feed(r)])


@pytest.mark.parametrize("ours, theirs", [("sigmoid", "sigmoid"), ("dpo_norm", "sigmoid_norm")])
def test_loss_equals_trl_dpo_trainer(tokenizer, tmp_path, ours, theirs):
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    beta = 0.1 if ours == "sigmoid" else 5.0
    policy, reference = tiny_model(0), tiny_model(1)
    objective = DPO(loss_type=ours, beta=beta, reference="model")
    batch = _moxin_batch(objective, tokenizer)
    objective.reference_model = reference
    with torch.no_grad():
        loss, metrics = objective.loss(policy, batch)

    records = _records()
    dataset = Dataset.from_dict({k: [r[k] for r in records] for k in ("prompt", "chosen",
                                                                      "rejected")})
    args = DPOConfig(output_dir=str(tmp_path), beta=beta, loss_type=[theirs],
                     per_device_train_batch_size=len(records), max_length=256, bf16=False,
                     use_cpu=True, activation_checkpointing=False, report_to="none",
                     save_strategy="no", disable_tqdm=True, seed=0)
    trainer = DPOTrainer(model=tiny_model(0), ref_model=tiny_model(1), args=args,
                         train_dataset=dataset, processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(records))]
    trl_batch = trainer.data_collator(rows)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trl_batch)
    # same tokens and the same reply masks (TRL splits prompt and completion its own way)
    width = trl_batch["input_ids"].shape[1]
    valid = trl_batch["attention_mask"].bool()
    assert torch.equal(batch["input_ids"][:, :width][valid], trl_batch["input_ids"][valid])
    assert torch.equal(batch["completion_mask"][:, :width].long(), trl_batch["completion_mask"])
    assert abs(loss.item() - trl_loss.item()) < 1e-5, (loss.item(), trl_loss.item())
    if ours == "sigmoid":  # TRL's rewards use the summed log-ratios, as ours do for sigmoid
        trl_accuracy = trainer._metrics["train"]["rewards/accuracies"][-1]
        assert abs(metrics["rewards/accuracy"].item() - trl_accuracy) < 1e-6


def test_losses_follow_their_formulas():
    pc, pr = torch.tensor([-3.0, -1.0]), torch.tensor([-4.0, -0.5])
    rc, rr = torch.tensor([-3.5, -1.0]), torch.tensor([-3.5, -1.0])
    h = (pc - rc) - (pr - rr)
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=2.0)
    torch.testing.assert_close(losses, -torch.nn.functional.logsigmoid(2.0 * h))
    torch.testing.assert_close(chosen, 2.0 * (pc - rc))
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta=2.0, label_smoothing=0.2)
    torch.testing.assert_close(smoothed, -0.8 * torch.nn.functional.logsigmoid(2.0 * h)
                               - 0.2 * torch.nn.functional.logsigmoid(-2.0 * h))
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo")
    torch.testing.assert_close(ipo, (h - 1.0) ** 2)
    with pytest.raises(MoxinError, match="label_smoothing applies to the sigmoid"):
        DPO(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(MoxinError, match="loss_type must be one of sigmoid, dpo_norm, ipo"):
        DPO(loss_type="hinge")
    assert DPO(loss_type="dpo_norm").beta == 5.0 and DPO(loss_type="sigmoid").beta == 0.1


def test_record_shapes_give_the_same_pair(tokenizer):
    trl_style = _records()[2]
    tulu_style = {"prompt": PROMPTS[2],
                  "chosen": [{"role": "user", "content": PROMPTS[2]},
                             {"role": "assistant", "content": CHOSEN[2]}],
                  "rejected": [{"role": "user", "content": PROMPTS[2]},
                               {"role": "assistant", "content": REJECTED[2]}]}
    strings = {"prompt": PROMPTS[2], "chosen": CHOSEN[2], "rejected": REJECTED[2]}
    shapes = [pair_messages(r) for r in (trl_style, tulu_style, strings)]
    assert shapes[0] == shapes[1] == shapes[2]
    builder = PairBuilder(tokenizer, 256)
    keys = {builder.feed(r)[0]["key"] for r in (trl_style, tulu_style, strings)}
    assert len(keys) == 1


@pytest.mark.parametrize("record, fragment", [
    ({"prompt": "Hi", "chosen": "", "rejected": "no"}, "`chosen` is empty"),
    ({"prompt": "Hi", "chosen": "yes", "rejected": [{"role": "assistant", "content": " "}]},
     "the `rejected` reply is empty"),
    ({"prompt": "Hi", "chosen": "yes"}, "no `rejected` field"),
    ({"prompt": "Hi", "chosen": [{"role": "critic", "content": "x"}], "rejected": "no"},
     "unknown role 'critic'"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "OTHER"}, {"role": "assistant", "content": "c"}]},
     "continue different conversations"),
    ({"prompt": "Hi", "chosen": [{"role": "user", "content": "x"}], "rejected": "no"},
     "must end with the assistant's reply"),
])
def test_bad_pairs_are_clear_errors(tokenizer, record, fragment):
    with pytest.raises(MoxinError, match=f"prefs.jsonl:7.*{fragment}"):
        PairBuilder(tokenizer, 256).feed({**record, "__origin__": "prefs.jsonl:7"})


def test_identical_and_overlong_pairs_are_skipped_and_counted(tokenizer):
    builder = PairBuilder(tokenizer, 48)
    assert builder.feed({"prompt": "Hi", "chosen": "same", "rejected": "same"}) == []
    assert builder.feed({"prompt": "apple " * 60, "chosen": "a", "rejected": "b"}) == []
    (cut,) = builder.feed({"prompt": "Hi", "chosen": "pear " * 40, "rejected": "plum " * 40})
    assert len(cut["chosen_ids"]) == 48 and any(cut["chosen_mask"])
    assert builder.stats == {"pairs": 1, "truncated": 1, "skipped_long_prompt": 1,
                             "skipped_identical": 1}


def test_at_the_start_the_loss_is_log2(tokenizer):
    """Policy == reference: every log-ratio is 0, the loss is log 2 and rewards are 0."""
    policy = tiny_model(3)
    live = DPO(loss_type="dpo_norm", reference="model")
    batch = _moxin_batch(live, tokenizer)
    live.reference_model = copy.deepcopy(policy)  # a bare loop sets the reference itself
    with torch.no_grad():
        loss, metrics = live.loss(policy, batch)
    assert abs(loss.item() - torch.log(torch.tensor(2.0)).item()) < 1e-6
    assert metrics["rewards/margin"].abs().item() < 1e-6
    with pytest.raises(MoxinError, match="needs the training data up front"):
        DPO(reference="precomputed").loss(policy, batch)
    with pytest.raises(MoxinError, match="needs the reference model"):
        DPO(reference="model").loss(policy, batch)


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def _fit_dpo(hf_folder, tokenizer, reference, out):
    from moxin_core.api import (DataSpec, HyperParameters, Registry, build_datamodule,
                                build_module, build_objective)

    registry = Registry()
    hparams = HyperParameters(max_steps=4, seq_len=128, micro_batch_size=2, lr=5e-3,
                              schedule="constant", weight_decay=0.0, precision="32-true")
    objective = build_objective(registry, "dpo", {"loss_type": "dpo_norm", "reference": reference})
    data = DataSpec("embedded_preferences", 1.0, {"split": "train", "num_examples": 50})
    datamodule = build_datamodule(registry, [data], objective, tokenizer, 128, 2)
    module = build_module(registry, str(hf_folder), objective, tokenizer, hparams)
    losses = _Losses()
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", precision="32-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         callbacks=[losses], default_root_dir=out)
    trainer.fit(module, datamodule=datamodule)
    return module, losses.losses


def test_live_and_precomputed_references_train_identically(hf_folder, tokenizer, tmp_path):
    """The same pairs against the same starting model: the frozen reference run on every batch
    and the log-probs precomputed once give the same losses and the same weights."""
    live, live_losses = _fit_dpo(hf_folder, tokenizer, "model", tmp_path / "live")
    stored, stored_losses = _fit_dpo(hf_folder, tokenizer, "precomputed", tmp_path / "stored")
    assert len(live_losses) == 4
    assert abs(live_losses[0] - 0.6931472) < 1e-5  # step 0: policy == reference
    torch.testing.assert_close(torch.tensor(stored_losses), torch.tensor(live_losses),
                               atol=1e-5, rtol=0)
    for (name, a), (_, b) in zip(live.model.state_dict().items(),
                                 stored.model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)
    # the live reference is a frozen submodule: never trained, not in checkpoints
    reference = live.frozen["reference"]
    assert not any(p.requires_grad for p in reference.parameters())
    start = tiny_model_state(hf_folder)
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in start.items())
    checkpoint = {"state_dict": live.state_dict()}
    live.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("frozen.") for k in checkpoint["state_dict"])
    # the precomputed run stored its reference log-probs in the trainer's folder
    assert (tmp_path / "stored" / "reference_logps.pt").exists()


def tiny_model_state(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()
