"""The VLM presets and variants.

``moxin-vlm`` (DESIGN.md §2, Moxin-7B-VLM on prismatic): dinosiglip-224px (DINOv2 ViT-L/14 with
registers + SigLIP so400m/14, penultimate-layer patch features, 2176 wide, 256 patches),
fused-gelu-mlp projector, resize-naive images, the Moxin instruct model as the language model;
trained single-stage ("no-align"): projector + LLM, vision frozen, 2 epochs at lr 2e-5 (warm-up
3 %, cosine), weight decay 0.1, global batch 128, max length 2048, on LLaVA v1.5's 665K
conversations (``llava`` data by path: set ``finetune.data`` to your copy). Sharded with FSDP
over 8 GPUs as prismatic trains it: built on the meta device, decoder layers and vision blocks
sharded one by one, the instruct model's weights read by rank 0 and sent to the others (an 8B
model with AdamW state does not fit one 80 GB GPU unsharded).

``moxin-tiny-vlm``: a 2-block ViT on 32 px pictures, a gelu-mlp projector and
``moxin-tiny-instruct``'s final model in the same ``--out``, trained on the embedded shapes. The
tiny ViT has no pretrained weights, so it trains everything (``full-finetune``).
"""

from __future__ import annotations

from moxin_core.api import DataSpec, HyperParameters, ModelPreset, Stage, Variant

LLAVA_STEPS = 2 * 665_298 // 128


def moxin_vlm_preset() -> ModelPreset:
    return ModelPreset("vlm", {"encoder": {"name": "dinosiglip",
                                           "options": {"image_size": 224,
                                                       "image_resize": "resize-naive"}},
                               "projector": "fused-gelu-mlp",
                               "llm": "moxin-org/moxin-instruct-7b",
                               "pad_token": "<PAD>", "pad_to_multiple_of": 64},
                       "Moxin-7B-VLM: dinosiglip-224px + fused-gelu-mlp + Moxin-7B-Instruct")


def moxin_tiny_vlm_preset() -> ModelPreset:
    return ModelPreset("vlm", {"encoder": {"name": "tiny-vit", "options": {}},
                               "projector": "gelu-mlp", "llm": "variant:moxin-tiny-instruct",
                               "pad_token": "<PAD>", "pad_to_multiple_of": 64},
                       "tiny VLM: 2-block ViT (32 px, 16 patches) + gelu-mlp + moxin-tiny-instruct")


def moxin_vlm() -> Variant:
    return Variant(
        name="moxin-vlm",
        description="Moxin-7B-VLM: dinosiglip-224px, fused-gelu-mlp, single-stage finetune from "
                    "Moxin-7B-Instruct on LLaVA v1.5 data (prismatic recipe).",
        stages=[Stage("finetune", "vlm",
                      [DataSpec("llava", 1.0, {"path": "data/llava_v1_5_mix665k.json",
                                               "image_root": "data/llava-images"})],
                      model="moxin-vlm", objective_options={"trainable": "finetune"},
                      hparams=HyperParameters(
                          micro_batch_size=16, grad_accum=1, devices=8, accelerator="gpu",
                          strategy="fsdp", precision="bf16-mixed", seq_len=2048, lr=2e-5,
                          weight_decay=0.1, warmup_ratio=0.03, schedule="cosine",
                          max_steps=LLAVA_STEPS, grad_clip=1.0, checkpoint_every=500),
                      description="Projector + LLM on LLaVA v1.5 conversations, vision frozen.")])


def moxin_tiny_vlm() -> Variant:
    return Variant(
        name="moxin-tiny-vlm",
        description="tiny VLM on the embedded shapes, from a moxin-tiny-instruct run in the same "
                    "--out.",
        stages=[Stage("vlm", "vlm",
                      # one-word questions: captions make the tiny model learn slower
                      [DataSpec("embedded_shapes", 1.0,
                                {"split": "train", "num_examples": 50000,
                                 "kinds": ["colour", "shape", "count", "position"]})],
                      model="moxin-tiny-vlm", objective_options={"trainable": "full-finetune"},
                      hparams=HyperParameters(
                          micro_batch_size=16, grad_accum=1, accelerator="cpu", devices=1,
                          precision="32-true", seq_len=96, lr=1e-3, weight_decay=0.0,
                          warmup_ratio=0.05, schedule="cosine", max_steps=400, grad_clip=1.0,
                          checkpoint_every=100, keep_checkpoints=2, log_every=5),
                      evaluators=["heldout-shapes"], evaluate_start=True,
                      description="Everything trains: the tiny ViT has no pretrained weights.")])


PRESETS = {"moxin-vlm": moxin_vlm_preset, "moxin-tiny-vlm": moxin_tiny_vlm_preset}
VARIANTS = {"moxin-vlm": moxin_vlm, "moxin-tiny-vlm": moxin_tiny_vlm}
