"""How-to: explain an image-caption similarity (CLIP) and an image pair (ViT), from local model folders, offline."""
import torch
import transformers
from skimage import data
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from zennit_bilrp.app.viz import plot_bilrp, save_figure
from zennit_bilrp.app.viz.image_text import plot_image_text
from zennit_bilrp.models.clip import ImageTextExplanation, explain_image_text, load_image_text_model
from zennit_bilrp.models.vision import explain_images, load_image_encoder

# No pretrained CLIP or ViT weights install offline here. On a machine with internet, a model folder is made once:
#     CLIPModel.from_pretrained('openai/clip-vit-base-patch32').save_pretrained('clip-folder')
#     CLIPProcessor.from_pretrained('openai/clip-vit-base-patch32').save_pretrained('clip-folder')
# Here a small CLIP with RANDOM weights (ViT-B/32 geometry: 224 x 224 pixels, 32-pixel patches; 2 thin layers per
# tower) and a word-level tokenizer stand in for it, saved the same way. Its explanations are exact for its weights,
# but they show the layout of the figures, not a finding.
torch.manual_seed(0)
words = ['a', 'photo', 'of', 'cat', 'sitting', 'on', 'sofa', 'the', 'with', 'red', 'blanket']
vocab = {'<pad>': 0, '<|startoftext|>': 1, '<unk>': 2, **{w: i + 3 for i, w in enumerate(words)}, '<|endoftext|>': 49}
backend = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
backend.pre_tokenizer = pre_tokenizers.Whitespace()
backend.post_processor = processors.TemplateProcessing(
    single='<|startoftext|> $A <|endoftext|>', special_tokens=[('<|startoftext|>', 1), ('<|endoftext|>', 49)])
tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token='<pad>', unk_token='<unk>',
                                                 bos_token='<|startoftext|>', eos_token='<|endoftext|>')
layers = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
config = transformers.CLIPConfig(
    text_config=dict(layers, vocab_size=50, max_position_embeddings=16, bos_token_id=1, eos_token_id=49),
    vision_config=dict(layers, image_size=224, patch_size=32), projection_dim=32)
transformers.CLIPModel(config).save_pretrained('clip-folder')
tokenizer.save_pretrained('clip-folder')
transformers.CLIPImageProcessor().save_pretrained('clip-folder')     # resize, center crop 224, CLIP's mean/std

# Explain an image and a caption: R[p, t] for every image patch p (the model's 7 x 7 grid) and caption token t.
model = load_image_text_model('clip-folder')                          # local_files_only: nothing is downloaded
photo = data.chelsea()                                                # a cat, shipped with scikit-image
explanation = explain_image_text(model, photo, 'a photo of a cat sitting on the sofa')
print(explanation.tokens)
print(f'grid {explanation.grid}, relevance {tuple(explanation.relevance.shape)} (patches x tokens)')
print(f'cosine {explanation.similarity:.4f}, sum R {explanation.total:.4f} (the rest: biases, random weights)')
for _, (row, col), _, token, value in explanation.top_pairs(3):
    print(f'patch ({row}, {col}) - {token}: {value:+.4f}')
assert explanation.relevance.shape == (49, 11) and explanation.token_heatmaps().shape == (11, 7, 7)
assert torch.allclose(explanation.patch_marginal().sum(), explanation.token_marginal().sum())
explanation.save('cat.npz')                                           # one NPZ: relevance, tokens, grid, image
assert torch.equal(ImageTextExplanation.load('cat.npz').relevance, explanation.relevance)
figure = plot_image_text(explanation, k=12,
                         note='random weights (no pretrained CLIP installs offline here): the layout, not a finding')
save_figure(figure, 'image_text.png', dpi=90)
# The same from the command line:
#     zennit-bilrp explain-image-text cat.png "a photo of a cat sitting on the sofa" --model clip-folder --out fig.png

# Image-image: a vision transformer's embedding (here a random ViT, 224 x 224, 32-pixel patches; DINOv2, CLIP and
# SigLIP vision folders load the same way), relevance of every pair of patches on the model's own grid.
vit = transformers.ViTModel(transformers.ViTConfig(image_size=224, patch_size=32, **layers))
vit.save_pretrained('vit-folder')
encoder = load_image_encoder('vit-folder', pooling='mean')            # mean of the patch tokens
processor = transformers.CLIPImageProcessor()                         # any processor giving 224 x 224
processor.save_pretrained('vit-folder')                               # for: zennit-bilrp explain-images ... --model
x_a, x_b = (processor(images=image, return_tensors='pt')['pixel_values'] for image in (photo, data.coffee()))
pair = explain_images(encoder, x_a, x_b)
print(f'image pair: relevance {tuple(pair.relevance.shape)}, cosine {float(pair.similarity[0]):.4f}, '
      f'sum R {float(pair.relevance.sum()):.4f}')
assert pair.relevance.shape == (1, 49, 49) and pair.grid_a.patch == (32, 32)
figure = plot_bilrp(pair, x_a, x_b, k=15, denormalize=(processor.image_mean, processor.image_std),
                    title=f'cosine y = {float(pair.similarity[0]):.3f}, sum of R = {float(pair.relevance.sum()):.3f}, '
                          '15 strongest patch pairs\nrandom-weight ViT (mean of patch tokens): the layout, not a '
                          'finding')
save_figure(figure, 'image_pair.png', dpi=100)
