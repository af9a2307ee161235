"""Is transformer BiLRP right? Ground-truth token pairs and pair perturbation on all-MiniLM-L6-v2.

Ground truth: sentence pairs built so that their similarity comes from known token pairs: one content word (the
same word, or a synonym) inserted into two unrelated sentence frames. The frames are fixed; the words vary. A
method *hits* when its top-ranked token pair(s) join the inserted words (all their word pieces count). Two sets:
the 20 development pairs (``--split dev``, used while the conservative rules were built) and 40 held-out pairs
(``--split heldout``: 20 same-word, 20 synonym pairs in 8 + 8 new frames, written before AttnLRP was measured);
``--split all`` runs both and reports each.

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

Methods: BiLRP with the conservative rules and LRP-0 (the NAACL 2024 recipe; TransformerLRP(family='conservative')),
BiLRP with AttnLRP's rules (TransformerLRP(family='attnlrp')), BiLRP LRP-gamma (gamma 0.25), Hessian x product,
outer products of gradient (saliency), gradient x input and integrated-gradient marginals (Captum), integrated
Jacobians (Moeller et al. 2023; 4 Gauss-Legendre points, ~30 s per pair here), random order. The baselines come
from zennit_bilrp.interop.baselines, on the same TokenEncoder inputs (embedding-layer outputs; paths of the
integrated methods start at zero embeddings, the attention mask kept).

Run:   python benchmarks/text_eval.py --out out/text_eval [--split all] [--resume]
Quick: python benchmarks/text_eval.py --out /tmp/text_eval --pairs 2 --methods bilrp_lrp0,random --no-figure
Writes results.csv (one row per pair and method, appended as pairs finish: --resume continues an interrupted run),
summary.json (means, standard errors, per split), table.md (the tables), curves.png (perturbation curves) and
example.png (one explained pair).
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
#: held-out pairs (written after the rules were settled on the set above): new frames, new words
HELDOUT_FRAMES_A = (
    'Last winter our neighbour bought a {} without telling anyone.',
    'The report on the evening news described the {} in great detail.',
    'I once read a strange story about a {} in an old magazine.',
    'Grandma kept a tiny {} on the kitchen table for years.',
    'The tourists stared at the {} before the bus left.',
    'According to the guide, the {} was the highlight of the trip.',
    'My brother drew a {} in the margin of his notebook.',
    'Someone left a {} outside the library door this afternoon.',
)
HELDOUT_FRAMES_B = (
    'We argued for an hour about whether the {} was real.',
    'Her favourite memory involves a {} and a rainy afternoon.',
    'The guard refused to talk about the {} with visitors.',
    'Nobody expected the {} to become so famous in our town.',
    'In my dream there was a {} floating above the lake.',
    'The manager wrote a short note about the {} and left early.',
    'A local newspaper ran a long article about the {} yesterday.',
    'They spent the whole weekend searching for the {} in the fields.',
)
HELDOUT_WORDS = (
    ('lighthouse', 'lighthouse'), ('penguin', 'penguin'), ('violin', 'violin'), ('hurricane', 'hurricane'),
    ('giraffe', 'giraffe'), ('telescope', 'telescope'), ('cathedral', 'cathedral'), ('glacier', 'glacier'),
    ('saxophone', 'saxophone'), ('octopus', 'octopus'), ('waterfall', 'waterfall'), ('helicopter', 'helicopter'),
    ('pyramid', 'pyramid'), ('kangaroo', 'kangaroo'), ('microscope', 'microscope'), ('avalanche', 'avalanche'),
    ('butterfly', 'butterfly'), ('skyscraper', 'skyscraper'), ('tractor', 'tractor'), ('camel', 'camel'),
    ('house', 'home'), ('child', 'kid'), ('movie', 'film'), ('road', 'street'), ('lawyer', 'attorney'),
    ('shop', 'store'), ('student', 'pupil'), ('baby', 'infant'), ('trash', 'garbage'), ('river', 'stream'),
    ('cup', 'mug'), ('pistol', 'gun'), ('hat', 'cap'), ('rug', 'carpet'), ('taxi', 'cab'), ('lorry', 'truck'),
    ('picture', 'photo'), ('jail', 'prison'), ('pony', 'horse'), ('sweater', 'jumper'),
)
SPLITS = {'dev': (FRAMES_A, FRAMES_B, WORDS), 'heldout': (HELDOUT_FRAMES_A, HELDOUT_FRAMES_B, HELDOUT_WORDS)}
METHODS = ('bilrp_lrp0', 'bilrp_attnlrp', 'bilrp_gamma', 'hessian_product', 'saliency_outer', 'ixg_outer',
           'ig_outer', 'integrated_jac', 'random')
#: the BiLRP methods: composite of each
BILRP_RULES = {'bilrp_lrp0': dict(family='conservative'), 'bilrp_attnlrp': dict(family='attnlrp'),
               'bilrp_gamma': dict(family='conservative', linear='gamma', gamma=0.25)}
SPECIAL = ('[CLS]', '[SEP]')


def make_pairs(count: int, split: str = 'dev') -> list:
    """``count`` (sentence A, sentence B, word A, word B, kind) tuples of ``split`` ('dev', 'heldout' or 'all': the
    dev pairs then the held-out ones); frames cycle independently of the words."""
    if split == 'all':
        return make_pairs(len(WORDS), 'dev') + make_pairs(max(0, count - len(WORDS)), 'heldout')
    frames_a, frames_b, words = SPLITS[split]
    pairs = []
    for index in range(min(count, len(words))):
        word_a, word_b = words[index]
        frame_a = frames_a[index % len(frames_a)]
        frame_b = frames_b[(index * 5 + 1) % len(frames_b)]
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
    if method in BILRP_RULES:
        explanation = explain_text(encoder, sentence_a, sentence_b, composite=TransformerLRP(**BILRP_RULES[method]))
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
    rules = {'lrp0': TransformerLRP(family='conservative'), 'attnlrp': TransformerLRP(family='attnlrp'),
             'gamma_0.25': TransformerLRP(family='conservative', linear='gamma', gamma=0.25),
             'epsilon_0.01': TransformerLRP(family='conservative', epsilon=0.01),
             'epsilon_0.1': TransformerLRP(family='conservative', epsilon=0.1)}
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
    out = {'pairs': len(pairs), 'dtype': 'float64'}
    for family in ('conservative', 'attnlrp'):
        gaps = []
        for sentence_a, sentence_b, *_ in pairs:
            explanation = explain_text(bias_free, sentence_a, sentence_b, composite=TransformerLRP(family=family))
            gaps.append(abs(explanation.total - explanation.similarity) / abs(explanation.similarity))
        out[f'max_relative_gap_{family}'] = float(max(gaps))
    return out


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


LABELS = {'bilrp_lrp0': 'BiLRP, conservative (LRP-0, NAACL recipe)', 'bilrp_attnlrp': 'BiLRP, AttnLRP (LRP-0)',
          'bilrp_gamma': 'BiLRP, conservative, LRP-γ 0.25', 'hessian_product': 'Hessian × product',
          'saliency_outer': 'gradient outer product (Captum Saliency)', 'ixg_outer': 'gradient × input outer product',
          'ig_outer': 'integrated-gradients outer product', 'integrated_jac': 'integrated Jacobians (4 steps)',
          'random': 'random order'}


def markdown_table(summaries: dict) -> str:
    """One markdown table per split: hit@1 (same / synonym), found@3, drop@1, AUC, seconds per pair."""
    lines = []
    for split, (count, summary) in summaries.items():
        lines += [f'### {split} ({count} pairs)', '',
                  '| method | hit@1 (same / synonym) | found in top 3 | drop@1 | perturbation AUC ↓ | s / pair |',
                  '|---|---|---|---|---|---|']
        for method, entry in summary.items():
            hit = entry['hit@1']
            kinds = ' / '.join(f"{entry[f'hit@1_{kind}']:.2f}" for kind in ('same', 'synonym')
                               if f'hit@1_{kind}' in entry)
            lines.append(f"| {LABELS.get(method, method)} | {hit['mean']:.2f} ({kinds}) | "
                         f"{entry['found@3']['mean']:.2f} | {entry['drop@1']['mean']:.2f} ± "
                         f"{entry['drop@1']['sem']:.2f} | {entry['auc']['mean']:.3f} ± {entry['auc']['sem']:.3f} | "
                         f"{entry['seconds']['mean']:.2g} |")
        lines.append('')
    return '\n'.join(lines)


def read_rows(path: Path) -> list:
    """Rows of an earlier (interrupted) run, to resume."""
    if not path.is_file():
        return []
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def evaluate_pair(encoder, index: int, pair: tuple, method: str, steps: int) -> dict:
    """One row: the scores of ``method`` on pair ``index`` (and its perturbation curve as curve_0..curve_steps)."""
    sentence_a, sentence_b, word_a, word_b, kind = pair
    tokens_a = encoder.tokens(*encoder.tokenize([sentence_a]))[0]
    tokens_b = encoder.tokens(*encoder.tokenize([sentence_b]))[0]
    truth = {(i, j) for i in word_positions(encoder, sentence_a, word_a)
             for j in word_positions(encoder, sentence_b, word_b)}
    n_candidates = sum(t not in SPECIAL for t in tokens_a) * sum(t not in SPECIAL for t in tokens_b)
    relevance, seconds, _ = explain(method, encoder, sentence_a, sentence_b, seed=index)
    ranking = ranked_pairs(relevance, tokens_a, tokens_b)
    curve = perturbation_curve(encoder, sentence_a, sentence_b, ranking, steps)
    row = {'pair': index, 'kind': kind, 'word_a': word_a, 'word_b': word_b, 'method': method,
           'hit@1': float(ranking[0] in truth), 'hit@3': float(np.mean([p in truth for p in ranking[:3]])),
           'found@3': float(any(p in truth for p in ranking[:3])), 'truth_pairs': len(truth),
           'chance': len(truth) / n_candidates, 'drop@1': 1 - curve[min(1, steps)],
           'drop@3': 1 - curve[min(3, steps)], 'auc': float(curve.mean()), 'seconds': seconds,
           'top_pair': f'{tokens_a[ranking[0][0]]}-{tokens_b[ranking[0][1]]}'}
    row.update({f'curve_{k}': float(value) for k, value in enumerate(curve)})
    return row


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
                label=f'{LABELS.get(method, method)} (AUC {mean.mean():.3f})')
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
    parser.add_argument('--split', default='dev', choices=('dev', 'heldout', 'all'),
                        help='the 20 development pairs, the 40 held-out pairs, or both')
    parser.add_argument('--pairs', type=int, default=None, help='number of pairs (default: all of the split)')
    parser.add_argument('--methods', default=','.join(METHODS))
    parser.add_argument('--steps', type=int, default=5, help='token pairs masked in the perturbation curves')
    parser.add_argument('--model', default=None, help='sentence-transformers folder (default all-MiniLM-L6-v2)')
    parser.add_argument('--resume', action='store_true', help='keep the rows of an earlier run in --out')
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
    total = {'dev': len(WORDS), 'heldout': len(HELDOUT_WORDS), 'all': len(WORDS) + len(HELDOUT_WORDS)}[args.split]
    pairs = make_pairs(total if args.pairs is None else args.pairs, args.split)
    splits = (['dev'] * len(WORDS) + ['heldout'] * len(HELDOUT_WORDS) if args.split == 'all'
              else [args.split] * len(pairs))
    path = out / 'results.csv'
    rows = read_rows(path) if args.resume else []
    done = {(int(r['pair']), r['method']) for r in rows}
    for index, pair in enumerate(tqdm(pairs, desc='pairs')):
        todo = [m for m in methods if (index, m) not in done]
        new = [{'split': splits[index], **evaluate_pair(encoder, index, pair, m, args.steps)} for m in todo]
        if new:
            write_header = not path.is_file() or not rows
            with open(path, 'a' if not write_header else 'w', newline='') as handle:
                writer = csv.DictWriter(handle, fieldnames=list(new[0]))
                if write_header:
                    writer.writeheader()
                writer.writerows(new)
            rows += new
    rows = [r for r in rows if r['method'] in methods and int(r['pair']) < len(pairs)]
    curves = {m: [np.array([float(r[f'curve_{k}']) for k in range(args.steps + 1)]) for r in rows
                  if r['method'] == m] for m in methods}
    by_split = {split: (sum(1 for s in splits[:len(pairs)] if s == split),
                        summarize([r for r in rows if r['split'] == split], methods))
                for split in dict.fromkeys(splits[:len(pairs)])}
    if len(by_split) > 1:
        by_split['all'] = (len(pairs), summarize(rows, methods))
    summary = {'model': encoder.path, 'pairs': len(pairs), 'split': args.split, 'steps': args.steps,
               'methods': by_split[args.split if args.split in by_split else 'all'][1],
               'by_split': {split: entry for split, (_, entry) in by_split.items()},
               'mean_curves': {m: np.mean(v, axis=0).tolist() for m, v in curves.items() if v},
               'torch_threads': torch.get_num_threads(), 'note': 'timings on a shared 2-core CPU (under contention)'}
    if not args.no_conservation:
        summary['conservation_sumR_over_y'] = conservation(encoder, pairs)
        summary['conservation_bias_free'] = bias_free_conservation(encoder, pairs[:4])
    elif args.resume and (out / 'summary.json').is_file():  # keep what an earlier run of the same pairs measured
        earlier = json.loads((out / 'summary.json').read_text())
        summary.update({key: earlier[key] for key in ('conservation_sumR_over_y', 'conservation_bias_free')
                        if key in earlier and earlier.get('pairs') == len(pairs)})
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    (out / 'table.md').write_text(markdown_table(by_split))
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
