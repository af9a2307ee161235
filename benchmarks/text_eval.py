"""Is transformer BiLRP right? Ground-truth token pairs and pair perturbation on all-MiniLM-L6-v2.

Ground truth: sentence pairs built so that their similarity comes from known token pairs: one content word (the
same word, or a synonym) inserted into two unrelated sentence frames. The frames are fixed; the words vary. A
method *hits* when its top-ranked token pair(s) join the inserted words (all their word pieces count).

Scores per pair and method (token pairs with [CLS]/[SEP] are left out of every ranking):
  hit@1, hit@3    share of the top-1 / top-3 token pairs that join the inserted words (hit@3 is at most 1/3 when
                  the words are single tokens); chance: share of such pairs among all token pairs
  found@3         whether a pair joining the inserted words is among the top 3
  drop@k          pair perturbation: the tokens of the top-k pairs are removed on both sides (attention mask 0:
                  neither attended to nor pooled; replacing them by [MASK] on both sides would add shared tokens
                  and raise the similarity), then 1 - y_k / y_0 (higher: the pairs matter more); auc = mean of
                  y_k / y_0 over k = 0..K (lower is better)
  seconds         time to explain the pair (2 shared CPU cores: timings are under contention)
Conservation: sum R / y of BiLRP with each rule, on every pair.

Methods: BiLRP LRP-0 (the NAACL 2024 recipe; TransformerLRP()), BiLRP LRP-gamma (gamma 0.25), Hessian x product,
outer products of gradient (saliency), gradient x input and integrated-gradient marginals (Captum), integrated
Jacobians (Moeller et al. 2023; 4 Gauss-Legendre points, ~30 s per pair here), random order. The baselines come
from zennit_bilrp.interop.baselines, on the same TokenEncoder inputs (embedding-layer outputs; paths of the
integrated methods start at zero embeddings, the attention mask kept).

Run:   python benchmarks/text_eval.py --out out/text_eval
Quick: python benchmarks/text_eval.py --out /tmp/text_eval --pairs 2 --methods bilrp_lrp0,random --no-figure
Writes results.csv (one row per pair and method), summary.json (means, standard errors), curves.png
(perturbation curves) and example.png (one explained pair).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from zennit_bilrp.interop.baselines import hessian_product, integrated_jacobians, marginal_outer_product
from zennit_bilrp.lrp.transformers import TransformerLRP
from zennit_bilrp.models.text import explain_text, load_sentence_encoder

#: sentence frames of side A and side B ({} is the inserted word); A and B frames share no content word
FRAMES_A = (
    'Yesterday my uncle wrote a long letter about the {} to the city council.',
    'In the museum we saw an old painting of a {} next to the window.',
    'The teacher asked the students to describe a {} in three sentences.',
    'During the storm the radio kept talking about the {} for hours.',
    'My sister found a small {} hidden behind the books on the shelf.',
    'At the market an old man was selling a {} for almost nothing.',
)
FRAMES_B = (
    'She could not stop thinking of the {} while driving home after work.',
    'A photograph of the {} appeared on the front page this morning.',
    'Nobody in our village had ever seen such a {} before last summer.',
    'He quietly pointed at the {} and then walked out of the room.',
    'The children were drawing a {} on the pavement with chalk.',
    'Everyone at the party kept asking questions about the {}.',
)
#: (word in A, word in B): the same word, or a synonym
WORDS = (
    ('cat', 'cat'), ('guitar', 'guitar'), ('volcano', 'volcano'), ('bicycle', 'bicycle'), ('dolphin', 'dolphin'),
    ('castle', 'castle'), ('piano', 'piano'), ('tornado', 'tornado'), ('elephant', 'elephant'),
    ('submarine', 'submarine'), ('car', 'automobile'), ('doctor', 'physician'), ('kitten', 'cat'),
    ('sofa', 'couch'), ('boat', 'ship'), ('gift', 'present'), ('puppy', 'dog'), ('ocean', 'sea'),
    ('rock', 'stone'), ('forest', 'woods'),
)
METHODS = ('bilrp_lrp0', 'bilrp_gamma', 'hessian_product', 'saliency_outer', 'ixg_outer', 'ig_outer',
           'integrated_jac', 'random')
SPECIAL = ('[CLS]', '[SEP]')


def make_pairs(count: int) -> list:
    """``count`` (sentence A, sentence B, word A, word B, kind) tuples; frames cycle independently of the words."""
    pairs = []
    for index in range(count):
        word_a, word_b = WORDS[index % len(WORDS)]
        frame_a = FRAMES_A[index % len(FRAMES_A)]
        frame_b = FRAMES_B[(index * 5 + 1) % len(FRAMES_B)]
        kind = 'same' if word_a == word_b else 'synonym'
        pairs.append((frame_a.format(word_a), frame_b.format(word_b), word_a, word_b, kind))
    return pairs


def word_positions(encoder, sentence: str, word: str) -> list:
    """Token positions of ``word``'s pieces in the tokenized ``sentence``."""
    tokens = encoder.tokens(*encoder.tokenize([sentence]))[0]
    pieces = encoder.tokenizer.tokenize(word)
    for start in range(len(tokens) - len(pieces) + 1):
        if tokens[start:start + len(pieces)] == pieces:
            return list(range(start, start + len(pieces)))
    raise ValueError(f'{word!r} not found in the tokens of {sentence!r}')


def embed_function(encoder):
    """``x (N, H + 1, L) -> (N, h)``: the plain model (no rules), for the gradient baselines."""
    return lambda x: encoder.head.embed(encoder.encoder(x))


def zero_reference(x: torch.Tensor) -> torch.Tensor:
    """Path start of the integrated methods: zero embeddings, the attention mask kept."""
    reference = torch.zeros_like(x)
    reference[:, -1] = x[:, -1]
    return reference


def explain(method: str, encoder, sentence_a: str, sentence_b: str, seed: int) -> tuple:
    """``(relevance (L_a, L_b) numpy, seconds, similarity)`` of one method on one pair."""
    x_a, x_b = encoder.inputs([sentence_a]), encoder.inputs([sentence_b])
    embed = embed_function(encoder)
    start = time.perf_counter()
    similarity = None
    if method in ('bilrp_lrp0', 'bilrp_gamma'):
        composite = TransformerLRP() if method == 'bilrp_lrp0' else TransformerLRP(linear='gamma', gamma=0.25)
        explanation = explain_text(encoder, sentence_a, sentence_b, composite=composite)
        relevance, similarity = explanation.relevance, explanation.similarity
    elif method == 'hessian_product':
        relevance = hessian_product(embed, x_a, x_b, similarity='cosine')[0]
    elif method == 'ig_outer':
        relevance = ig_outer(embed, x_a, x_b)
    elif method in ('saliency_outer', 'ixg_outer'):
        captum = {'saliency_outer': 'saliency', 'ixg_outer': 'input_x_gradient'}[method]
        relevance = marginal_outer_product(embed, x_a, x_b, method=captum, similarity='cosine')[0]
    elif method == 'integrated_jac':
        relevance = integrated_jacobians(embed, x_a, x_b, similarity='cosine', reference=zero_reference(x_a),
                                         reference_b=zero_reference(x_b), n_steps=4)[0]
    elif method == 'random':
        generator = torch.Generator().manual_seed(seed)
        relevance = torch.randn(x_a.shape[-1], x_b.shape[-1], generator=generator, dtype=torch.float64)
    else:
        raise ValueError(f'unknown method {method!r}; choose from {METHODS}')
    seconds = time.perf_counter() - start
    return relevance.detach().double().cpu().numpy(), seconds, similarity


def ig_outer(embed, x_a, x_b) -> torch.Tensor:
    """Outer product of integrated-gradient marginals (Captum), each from zero embeddings with the mask kept."""
    from zennit_bilrp.interop.baselines import marginal_attribution

    m_a = marginal_attribution(embed, x_a, x_b, 'integrated_gradients', 'cosine', baselines=zero_reference(x_a),
                               n_steps=32)
    m_b = marginal_attribution(embed, x_b, x_a, 'integrated_gradients', 'cosine', baselines=zero_reference(x_b),
                               n_steps=32)
    return m_a.sum(1)[0][:, None] * m_b.sum(1)[0][None, :]


def ranked_pairs(relevance: np.ndarray, tokens_a: list, tokens_b: list) -> list:
    """Token pairs ``(i, j)`` by decreasing relevance, special tokens left out."""
    keep_a = [i for i, t in enumerate(tokens_a) if t not in SPECIAL]
    keep_b = [j for j, t in enumerate(tokens_b) if t not in SPECIAL]
    sub = relevance[np.ix_(keep_a, keep_b)]
    order = np.argsort(-sub, axis=None, kind='stable')
    return [(keep_a[k // len(keep_b)], keep_b[k % len(keep_b)]) for k in order]


def perturbation_curve(encoder, sentence_a: str, sentence_b: str, pairs: list, steps: int) -> np.ndarray:
    """``y_k / y_0`` for k = 0..steps: the tokens of the first k pairs removed on both sides (attention mask 0:
    they are neither attended to nor pooled; the other tokens keep their positions)."""
    ids_a, mask_a = encoder.tokenize([sentence_a])
    ids_b, mask_b = encoder.tokenize([sentence_b])
    masks_a, masks_b = mask_a.repeat(steps + 1, 1), mask_b.repeat(steps + 1, 1)
    for k in range(steps + 1):
        for i, j in pairs[:k]:
            masks_a[k, i], masks_b[k, j] = 0, 0
    with torch.no_grad():
        x_a = encoder.encoder.embed(ids_a.expand(steps + 1, -1), masks_a).to(encoder.dtype)
        x_b = encoder.encoder.embed(ids_b.expand(steps + 1, -1), masks_b).to(encoder.dtype)
        emb_a = encoder.head.embed(encoder.encoder(x_a))
        emb_b = encoder.head.embed(encoder.encoder(x_b))
        y = torch.nn.functional.cosine_similarity(emb_a, emb_b).double().numpy()
    return y / y[0]


def conservation(encoder, pairs: list) -> dict:
    """sum R / y of BiLRP per rule over the pairs."""
    rules = {'lrp0': TransformerLRP(), 'gamma_0.25': TransformerLRP(linear='gamma', gamma=0.25),
             'epsilon_0.01': TransformerLRP(epsilon=0.01), 'epsilon_0.1': TransformerLRP(epsilon=0.1)}
    out = {}
    for name, composite in rules.items():
        ratios = []
        for sentence_a, sentence_b, *_ in tqdm(pairs, desc=f'conservation {name}', leave=False):
            explanation = explain_text(encoder, sentence_a, sentence_b, composite=composite)
            ratios.append(explanation.total / explanation.similarity)
        ratios = np.array(ratios)
        out[name] = {'mean_sumR_over_y': float(ratios.mean()), 'median': float(np.median(ratios)),
                     'min': float(ratios.min()), 'max': float(ratios.max()),
                     'mean_abs_gap': float(np.abs(ratios - 1).mean())}
    return out


def bias_free_conservation(encoder, pairs: list) -> dict:
    """The same model with its encoder biases and LayerNorm shifts zeroed: LRP-0 conserves exactly."""
    import copy

    from zennit_bilrp.lrp.transformers import TokenEncoder
    from zennit_bilrp.models.text import SentenceEncoder

    model = copy.deepcopy(encoder.model).double()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith('encoder') and name.endswith('bias'):
                param.zero_()
    bias_free = SentenceEncoder(encoder.tokenizer, model, TokenEncoder(model), encoder.head, encoder.normalize,
                                encoder.max_length, encoder.path)
    gaps = []
    for sentence_a, sentence_b, *_ in pairs:
        explanation = explain_text(bias_free, sentence_a, sentence_b, composite=TransformerLRP())
        gaps.append(abs(explanation.total - explanation.similarity) / abs(explanation.similarity))
    return {'max_relative_gap': float(max(gaps)), 'pairs': len(gaps), 'dtype': 'float64'}


def summarize(rows: list, methods: list) -> dict:
    summary = {}
    for method in methods:
        chosen = [r for r in rows if r['method'] == method]
        entry = {}
        for key in ('hit@1', 'hit@3', 'found@3', 'chance', 'drop@1', 'drop@3', 'auc', 'seconds'):
            values = np.array([float(r[key]) for r in chosen])
            entry[key] = {'mean': float(values.mean()),
                          'sem': float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0}
        for kind in ('same', 'synonym'):
            values = [float(r['hit@1']) for r in chosen if r['kind'] == kind]
            if values:
                entry[f'hit@1_{kind}'] = float(np.mean(values))
        summary[method] = entry
    return summary


def plot_curves(curves: dict, path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from zennit_bilrp.app.viz import save_figure

    fig, ax = plt.subplots(figsize=(8.0, 4.0))
    for method, values in curves.items():
        mean = np.mean(values, axis=0)
        ax.plot(range(steps + 1), mean, marker='o', markersize=3,
                linestyle='--' if method == 'random' else '-', linewidth=2.2 if method.startswith('bilrp') else 1.3,
                label=f'{method} (AUC {mean.mean():.3f})')
    ax.set_xlabel('token pairs masked (most relevant first)')
    ax.set_ylabel('cosine similarity / initial similarity')
    ax.set_title(f'Pair perturbation, all-MiniLM-L6-v2, {len(next(iter(curves.values())))} pairs')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='center left', bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path, dpi=150)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='out/text_eval')
    parser.add_argument('--pairs', type=int, default=len(WORDS))
    parser.add_argument('--methods', default=','.join(METHODS))
    parser.add_argument('--steps', type=int, default=5, help='token pairs masked in the perturbation curves')
    parser.add_argument('--model', default=None, help='sentence-transformers folder (default all-MiniLM-L6-v2)')
    parser.add_argument('--no-figure', action='store_true')
    parser.add_argument('--no-conservation', action='store_true')
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(',') if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f'unknown methods {unknown}; choose from {METHODS}')
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    encoder = load_sentence_encoder(args.model)
    pairs = make_pairs(args.pairs)
    rows, curves = [], {m: [] for m in methods}
    for index, (sentence_a, sentence_b, word_a, word_b, kind) in enumerate(tqdm(pairs, desc='pairs')):
        tokens_a = encoder.tokens(*encoder.tokenize([sentence_a]))[0]
        tokens_b = encoder.tokens(*encoder.tokenize([sentence_b]))[0]
        truth = {(i, j) for i in word_positions(encoder, sentence_a, word_a)
                 for j in word_positions(encoder, sentence_b, word_b)}
        n_candidates = sum(t not in SPECIAL for t in tokens_a) * sum(t not in SPECIAL for t in tokens_b)
        for method in methods:
            relevance, seconds, _ = explain(method, encoder, sentence_a, sentence_b, seed=index)
            ranking = ranked_pairs(relevance, tokens_a, tokens_b)
            curve = perturbation_curve(encoder, sentence_a, sentence_b, ranking, args.steps)
            curves[method].append(curve)
            rows.append({'pair': index, 'kind': kind, 'word_a': word_a, 'word_b': word_b, 'method': method,
                         'hit@1': float(ranking[0] in truth),
                         'hit@3': float(np.mean([p in truth for p in ranking[:3]])),
                         'found@3': float(any(p in truth for p in ranking[:3])), 'truth_pairs': len(truth),
                         'chance': len(truth) / n_candidates, 'drop@1': 1 - curve[min(1, args.steps)],
                         'drop@3': 1 - curve[min(3, args.steps)],
                         'auc': float(curve.mean()), 'seconds': seconds,
                         'top_pair': f'{tokens_a[ranking[0][0]]}-{tokens_b[ranking[0][1]]}'})
    with open(out / 'results.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {'model': encoder.path, 'pairs': len(pairs), 'steps': args.steps, 'methods': summarize(rows, methods),
               'mean_curves': {m: np.mean(v, axis=0).tolist() for m, v in curves.items()},
               'torch_threads': torch.get_num_threads(), 'note': 'timings on a shared 2-core CPU (under contention)'}
    if not args.no_conservation:
        summary['conservation_sumR_over_y'] = conservation(encoder, pairs)
        summary['conservation_bias_free'] = bias_free_conservation(encoder, pairs[:4])
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    if not args.no_figure:
        plot_curves(curves, out / 'curves.png', args.steps)
        from zennit_bilrp.app.text_viz import plot_text_bilrp
        from zennit_bilrp.app.viz import save_figure

        sentence_a, sentence_b, *_ = pairs[min(10, len(pairs) - 1)]
        save_figure(plot_text_bilrp(explain_text(encoder, sentence_a, sentence_b), k=10), out / 'example.png')
    return summary


if __name__ == '__main__':
    result = main()
    print(json.dumps(result['methods'], indent=1))
