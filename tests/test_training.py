"""The embedded model's training script: grounding targets, grounding loss, and one tiny end-to-end run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from magic_remover import EMBEDDED_MODEL
from magic_remover.scenes import make_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "training"))

import train_tiny_model as training  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(os.path.join(EMBEDDED_MODEL, "tokenizer"))


def test_grounding_targets_name_the_right_tokens_and_regions(tokenizer):
    scenes = [make_scene(seed) for seed in range(2_000_000, 2_000_060)]
    ids = tokenizer(
        [s.caption for s in scenes], padding="max_length", max_length=training.MAX_TOKENS, return_tensors="pt"
    ).input_ids
    # raises if a colour/shape position does not hold that word's token
    masks, positions = training.grounding_targets(scenes, ids, tokenizer)
    assert any(len(s.objects) == 3 for s in scenes) and any(o.transparent for s in scenes for o in s.objects)
    for b, scene in enumerate(scenes):
        for k, obj in enumerate(scene.objects):
            colour, shape = (tokenizer.decode([int(ids[b, p])]).strip() for p in positions[b, k])
            assert (colour, shape) == (obj.color, obj.shape)
            # the pooled mask holds the visible part only: never more than the object's own alpha
            assert masks[b, k].sum() * 16 <= obj.alpha.sum() + 1e-3
            if k == len(scene.objects) - 1:  # the front object is fully visible
                assert masks[b, k].sum() * 16 == pytest.approx(obj.alpha.sum(), rel=1e-4)
        assert (positions[b, len(scene.objects) :] == -1).all()
        assert masks[b, len(scene.objects) :].sum() == 0


def _store_for(attention_on: torch.Tensor, token: int, tokens: int = 8) -> dict:
    """A fake capture: every pixel gives `attention_on[pixel]` to `token`, the rest spread over the others."""
    pixels = attention_on.numel()
    probs = torch.full((1, pixels, tokens), 0.0)
    probs[0, :, token] = attention_on.flatten()
    probs[0, :, (token + 1) % tokens] = 1 - attention_on.flatten()
    return {"layer": probs}


def test_grounding_loss_is_zero_inside_one_outside_and_area_for_uniform():
    masks = torch.zeros(1, training.MAX_OBJECTS, 16, 16)
    masks[0, 0, 4:8, 4:8] = 1.0
    positions = torch.full((1, training.MAX_OBJECTS, 2), -1, dtype=torch.long)
    positions[0, 0] = torch.tensor([2, 2])
    keep = torch.tensor([True])
    inside = masks[0, 0].clone()
    assert training.grounding_loss(_store_for(inside, 2), masks, positions, keep) == pytest.approx(0.0, abs=1e-6)
    assert training.grounding_loss(_store_for(1 - inside, 2), masks, positions, keep) == pytest.approx(1.0)
    uniform = torch.full((16, 16), 0.3)
    expected = (1 - 16 / 256) ** 2
    assert training.grounding_loss(_store_for(uniform, 2), masks, positions, keep) == pytest.approx(expected)
    # coarser layers see the pooled mask; samples not kept contribute nothing
    coarse = torch.nn.functional.adaptive_avg_pool2d(masks[0, :1], 8)[0]
    assert training.grounding_loss(_store_for(coarse, 2), masks, positions, keep) < 0.6
    assert training.grounding_loss(_store_for(1 - inside, 2), masks, positions, torch.tensor([False])) == 0.0


def test_grounding_processor_matches_the_default_attention():
    from diffusers.models.attention_processor import AttnProcessor2_0

    from magic_remover.attention_processors import attention_layer_names
    from tiny_components import tiny_components

    unet = tiny_components()["unet"]
    sample = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 10, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        expected = unet(sample, 10, text).sample
    store = {}
    _, cross = attention_layer_names(unet)
    unet.set_attn_processor(
        {n: training.GroundingCaptureProcessor(store, n) for n in cross}
        | {n: p for n, p in unet.attn_processors.items() if n not in cross}
    )
    with torch.no_grad():
        got = unet(sample, 10, text).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert set(store) == set(cross)
    for probs in store.values():
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def test_training_command_runs_end_to_end_and_resumes(tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    command = [
        sys.executable, os.path.join(ROOT, "training", "train_tiny_model.py"),
        "--work-dir", str(work), "--out", str(out), "--resume", "--no-progress", "--workers", "0",
        "--ae-steps", "2", "--unet-steps", "2", "--batch-size", "2",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=600)
    info = json.loads((out / "training_info.json").read_text())
    assert info["final"] and info["unet_steps"] == 2 and info["ae_steps"] == 2
    assert np.isfinite(info["unet_loss_ema"])
    # resuming a finished run re-exports and trains nothing more
    result = subprocess.run(command, check=True, env=env, capture_output=True, text=True, timeout=600)
    assert "resumed" in result.stdout + result.stderr
    assert json.loads((out / "training_info.json").read_text())["unet_steps"] == 2
    # asking a finished run for more steps extends it
    longer = [*command[:-3], "3", "--batch-size", "2"]
    result = subprocess.run(longer, check=True, env=env, capture_output=True, text=True, timeout=600)
    assert "extending the finished run from 2 to 3" in result.stdout + result.stderr
    info = json.loads((out / "training_info.json").read_text())
    assert info["final"] and info["unet_steps"] == 3

    from magic_remover import MagicRemoverPipeline

    pipe = MagicRemoverPipeline.from_pretrained(str(out))
    assert pipe.unet.config.cross_attention_dim == 64


@pytest.mark.parametrize("downsample", [4, 2])
def test_the_autoencoder_recipe_builds_both_latent_sizes(downsample):
    """The shipped 16x16 latent and the 32x32 one of training/latent_size_experiment.py, trained by one loss."""
    torch.manual_seed(0)
    vae = training.build_vae(downsample)
    x = torch.rand(2, 3, training.IMAGE_SIZE, training.IMAGE_SIZE) * 2 - 1
    z = vae.encode(x).latent_dist.mode()
    assert z.shape == (2, training.LATENT_CHANNELS, training.IMAGE_SIZE // downsample, training.IMAGE_SIZE // downsample)
    loss, l1, kl = training.ae_loss(vae, x)
    loss.backward()
    assert torch.isfinite(loss) and l1 > 0 and kl >= 0
    assert all(p.grad is not None for p in vae.parameters() if p.requires_grad)
