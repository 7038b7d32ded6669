"""Every VAE diffusers uses with Stable Diffusion works, each built tiny from a config (no downloads)."""

import pytest
import torch
from conftest import quick_removal
from diffusers import AsymmetricAutoencoderKL, AutoencoderTiny, ConsistencyDecoderVAE
from tiny_components import make_test_image, tiny_components

from magic_remover import MagicRemoverPipeline


def _tiny(vae_class):
    torch.manual_seed(0)
    if vae_class is AutoencoderTiny:  # TAESD: no posterior, the encoder returns `.latents`
        return AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                               num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)  # fmt: skip
    if vae_class is AsymmetricAutoencoderKL:
        return AsymmetricAutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 2, down_block_out_channels=[8, 16],
                                       up_block_types=["UpDecoderBlock2D"] * 2, up_block_out_channels=[8, 16],
                                       norm_num_groups=8, latent_channels=4)  # fmt: skip
    return ConsistencyDecoderVAE(
        encoder_block_out_channels=(8, 16), encoder_down_block_types=["DownEncoderBlock2D"] * 2,
        encoder_layers_per_block=1, encoder_norm_num_groups=8, decoder_block_out_channels=(8, 16),
        decoder_down_block_types=["ResnetDownsampleBlock2D"] * 2, decoder_up_block_types=["ResnetUpsampleBlock2D"] * 2,
        decoder_layers_per_block=1, decoder_norm_num_groups=8,
    )  # fmt: skip


@pytest.mark.parametrize("vae_class", [AutoencoderTiny, AsymmetricAutoencoderKL, ConsistencyDecoderVAE])
def test_a_removal_runs_with_the_vae(vae_class):
    remover = MagicRemoverPipeline(**{**tiny_components(), "vae": _tiny(vae_class).eval()})
    images = quick_removal(remover, output_type="np")
    assert images.shape == (1, 32, 32, 3) and (images >= 0).all() and (images <= 1).all()


@pytest.mark.parametrize("vae_class", [AutoencoderTiny, AsymmetricAutoencoderKL])
def test_the_latent_is_deterministic_and_comes_from_the_right_field(vae_class):
    remover = MagicRemoverPipeline(**{**tiny_components(), "vae": _tiny(vae_class).eval()})
    pixels = remover._prepare_image(make_test_image())
    latents = remover.encode_image(pixels)
    torch.testing.assert_close(remover.encode_image(pixels), latents, atol=0, rtol=0)
    with torch.no_grad():
        encoded = remover.vae.encode(pixels)
    field = encoded.latents if vae_class is AutoencoderTiny else encoded.latent_dist.mode()  # the mode, not a sample
    torch.testing.assert_close(latents, field * remover.vae.config.scaling_factor)
