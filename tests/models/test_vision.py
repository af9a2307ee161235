"""Image-image BiLRP with vision-transformer embeddings: explain_images on the model's own patch grid, and a local
Hugging Face folder loaded offline."""
import pytest
import torch

pytest.importorskip('transformers', minversion='5',
                    reason="the [vision] extra (transformers 5) is not installed: pip install 'zennit-bilrp[vision]'")

from zennit_bilrp.lrp.towers import ImageEncoder  # noqa: E402
from zennit_bilrp.lrp.transformers import TransformerLRP  # noqa: E402
from zennit_bilrp.models.vision import explain_images, load_image_encoder  # noqa: E402

from helpers.vision_models import tiny_vision  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_thread')


def test_explain_images_on_the_patch_grid(tmp_path):
    """A bias-free DINOv2 saved with save_pretrained and loaded offline: one relevance per pair of patch tokens
    (2 x 2 grid), summing to the cosine under the conservative rules; AttnLRP gives another explanation."""
    tiny_vision('dinov2_registers', seed=1, bias_free=True).save_pretrained(tmp_path)
    encoder = load_image_encoder(tmp_path, pooling='mean', dtype=torch.float64)
    assert isinstance(encoder, ImageEncoder) and encoder.num_prefix == 3
    generator = torch.Generator().manual_seed(0)
    x_a, x_b = (torch.rand(2, 3, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    exact = TransformerLRP('conservative', epsilon=1e-12, stabilizer=1e-12)
    result = explain_images(encoder, x_a, x_b, composite=exact)
    assert result.relevance.shape == (2, 4, 4) and result.grid_a.patch == (4, 4)
    assert torch.allclose(result.relevance.sum(dim=(1, 2)), result.similarity, rtol=1e-7, atol=0)
    assert result.marginal_a.shape == (2, 3, 8, 8)
    other = explain_images(encoder, x_a, x_b, family='attnlrp', marginals=False)
    assert float((other.relevance - result.relevance).abs().max()) > 1e-4
    with pytest.raises(FileNotFoundError, match='no config.json'):
        load_image_encoder(tmp_path / 'missing')
