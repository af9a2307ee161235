"""How-to: explain the similarity of two sentences with all-MiniLM-L6-v2 (offline, the [text] extra)."""
import torch

from zennit_bilrp.app.text_viz import plot_text_bilrp
from zennit_bilrp.app.viz import save_figure
from zennit_bilrp.lrp.transformers import TransformerLRP
from zennit_bilrp.models.text import explain_text, load_sentence_encoder

# all-MiniLM-L6-v2 from the [text] extra: files verified by SHA-256, eager attention, mean pooling + Normalize
encoder = load_sentence_encoder()
explanation = explain_text(encoder, 'A cat sits on the mat.', 'A kitten is sitting on a rug.')

print(explanation.tokens_a)                    # ['[CLS]', 'a', 'cat', 'sits', 'on', 'the', 'mat', '.', '[SEP]']
print(f'cosine {explanation.similarity:.3f}, sum R {explanation.total:.3f}')
for _, _, token_a, token_b, value in explanation.top_pairs(3):
    print(f'{token_a:>6} - {token_b:<8} {value:+.3f}')
assert explanation.top_pairs(1)[0][2:4] == ('cat', 'kitten')
save_figure(plot_text_bilrp(explanation, k=10), 'pair.png')

# The engine underneath: the TokenEncoder (embedding outputs + attention mask as channels), the masked-mean head
# and the cosine. A padded batch gives the same relevance as the sentences alone; padding gets none.
with encoder.bilrp(TransformerLRP()) as bilrp:
    x = encoder.inputs(['A cat sits on the mat.', 'Dogs bark.'])           # (2, 384 + 1, 9): padded to 9 tokens
    result = bilrp.explain(x[:1], x[1:])
    short = bilrp.explain(encoder.inputs(['A cat sits on the mat.']), encoder.inputs(['Dogs bark.']))
assert torch.allclose(result.relevance[0, :, :5], short.relevance[0], atol=1e-5)
assert float(result.relevance[0, :, 5:].abs().max()) < 1e-12                # the padding positions
