"""Checks for the tiny text-to-image model shipped in magic_remover/models/tiny-shapes/."""

import json
import os

import numpy as np
import pytest

MODEL_DIR = os.environ.get("MAGIC_REMOVER_TINY_MODEL") or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "magic_remover", "models", "tiny-shapes")

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(MODEL_DIR, "model_index.json")),
    reason=f"embedded model not exported yet ({MODEL_DIR}); run training/train_tiny_model.py",
)

WEIGHT_EXTS = (".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".pkl")


def _files():
    for dirpath, _, files in os.walk(MODEL_DIR):
        for f in files:
            yield os.path.join(dirpath, f)


@pytest.fixture(scope="module")
def pipe():
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    return StableDiffusionPipeline.from_pretrained(MODEL_DIR, safety_checker=None, requires_safety_checker=False)


def test_size_and_safetensors_only():
    files = list(_files())
    total = sum(os.path.getsize(f) for f in files)
    assert total <= 30 * 1024 * 1024, f"model folder is {total / 2**20:.1f} MiB"
    assert not [f for f in files if f.endswith(WEIGHT_EXTS)]
    st = [f for f in files if f.endswith(".safetensors")]
    assert {os.path.basename(os.path.dirname(f)) for f in st} == {"unet", "vae", "text_encoder"}


def test_model_index():
    with open(os.path.join(MODEL_DIR, "model_index.json")) as f:
        idx = json.load(f)
    assert idx["_class_name"] == "StableDiffusionPipeline"
    assert idx["safety_checker"] == [None, None]
    assert idx["feature_extractor"] == [None, None]
    assert idx["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert idx["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert idx["vae"] == ["diffusers", "AutoencoderKL"]


def test_configs(pipe):
    sc = pipe.scheduler.config
    assert pipe.scheduler.__class__.__name__ == "DDIMScheduler"
    assert (sc.beta_start, sc.beta_end, sc.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert sc.num_train_timesteps == 1000 and sc.prediction_type == "epsilon"
    assert sc.clip_sample is False and sc.set_alpha_to_one is False and sc.steps_offset == 1
    assert pipe.vae.config.latent_channels == pipe.unet.config.in_channels == 4
    assert pipe.unet.config.sample_size == 16 and pipe.vae.config.sample_size == 64
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae.config.scaling_factor != 1.0 and 0.05 < pipe.vae.config.scaling_factor < 20
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    assert 0.5e6 < n_unet < 3.5e6


def test_tokenizer_one_token_per_word(pipe):
    from transformers import CLIPTokenizer

    from magic_remover.scenes import VOCABULARY, make_scene

    tok2 = CLIPTokenizer.from_pretrained(os.path.join(MODEL_DIR, "tokenizer"))
    for tok in (pipe.tokenizer, tok2):
        ids = set()
        for w in VOCABULARY:
            t = tok(w, add_special_tokens=False).input_ids
            assert len(t) == 1, (w, tok.convert_ids_to_tokens(t))
            assert t[0] != tok.unk_token_id
            ids.add(t[0])
        assert len(ids) == len(VOCABULARY)
        for seed in range(20):
            cap = make_scene(seed).caption
            t = tok(cap).input_ids
            assert len(t) == len(cap.split()) + 2
            assert len(t) <= tok.model_max_length


def test_vocab_files_present():
    tok_dir = os.path.join(MODEL_DIR, "tokenizer")
    for name in ("vocab.json", "merges.txt"):
        assert os.path.exists(os.path.join(tok_dir, name))


def test_generate_image(pipe):
    import torch

    out = pipe(
        "a red circle on a grass background",
        num_inference_steps=3,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    img = pipe("a blue star on a sky background", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (64, 64)


def test_autoencoder_reconstruction(pipe):
    """The VAE reconstructs held-out scenes (seeds < 100_000 are never trained on)."""
    import torch

    from magic_remover.scenes import make_scene

    x = np.stack([make_scene(s).image_array for s in range(16)]).astype(np.float32) / 127.5 - 1
    x = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mode()
        assert z.shape == (16, 4, 16, 16)
        y = pipe.vae.decode(z).sample.clamp(-1, 1)
    qa, qb = ((x + 1) * 127.5).round(), ((y + 1) * 127.5).round()
    mse = ((qa - qb) ** 2).flatten(1).mean(1)
    psnr = float((10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))).mean())
    assert psnr >= 26.0, f"held-out VAE PSNR {psnr:.2f} dB"
