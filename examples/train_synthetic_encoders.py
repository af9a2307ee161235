"""Train the three small encoders of the synthetic object-versus-context benchmark (CPU, about 3 minutes).

Each encoder is ``zennit_bilrp.models.synthetic.build_synthetic_encoder()`` (a SmallResNet with widths 8/16/32; the 32-d
pooled features are the embedding) trained with linear classifiers on top of the pooled features, on images from
``zennit_bilrp.models.synthetic.make_images`` (32 x 32, 4 object shapes x 4 background textures, independent labels):

- ``object``:  cross-entropy on the object class            -> keys on the object,
- ``context``: cross-entropy on the background class        -> keys on the context,
- ``mixed``:   object loss + 0.3 x background loss          -> object first, some context (the base model of
  ``examples/alignment_study.py``).

The classifiers are dropped; weights are stored in float16 (about 55 KB per encoder, 165 KB in all). The shipped file is
``zennit_bilrp/data/synthetic_encoders.pt``; to regenerate it::

    OMP_NUM_THREADS=1 python examples/train_synthetic_encoders.py --out out/encoders/synthetic_encoders.pt
    cp out/encoders/synthetic_encoders.pt zennit_bilrp/data/
"""
import argparse
import json
import os
import time

import torch

from zennit_bilrp.models.synthetic import build_synthetic_encoder, make_images

LOSS_WEIGHTS = {'object': (1.0, 0.0), 'context': (0.0, 1.0), 'mixed': (1.0, 0.3)}


def train(name, train_set, test_set, epochs, seed, batch_size=64, lr=3e-3):
    torch.manual_seed(seed)
    model = build_synthetic_encoder()
    heads = torch.nn.ModuleDict({'object': torch.nn.Linear(32, 4), 'background': torch.nn.Linear(32, 4)})
    w_obj, w_bg = LOSS_WEIGHTS[name]
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    n = len(train_set)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            features = model(train_set.x[index])
            loss = 0.0
            if w_obj:
                loss = loss + w_obj * torch.nn.functional.cross_entropy(heads['object'](features),
                                                                        train_set.object[index])
            if w_bg:
                loss = loss + w_bg * torch.nn.functional.cross_entropy(heads['background'](features),
                                                                       train_set.background[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        features = model(test_set.x)
    # linear-probe accuracies of the pooled features for both labels (the trained heads, and fresh probes)
    accuracy = {}
    for label, target in (('object', test_set.object), ('background', test_set.background)):
        accuracy[f'{label}_head'] = float((heads[label](features).argmax(1) == target).float().mean())
    return model, accuracy


def probe(model, train_set, test_set, steps=300):
    """Accuracy of fresh linear probes on frozen features (how much object/context information they hold)."""
    with torch.no_grad():
        f_train, f_test = model(train_set.x), model(test_set.x)
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    out = {}
    for label in ('object', 'background'):
        torch.manual_seed(0)
        linear = torch.nn.Linear(f_train.shape[1], 4)
        optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(linear(f_train), getattr(train_set, label))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        out[f'{label}_probe'] = float((linear(f_test).argmax(1) == getattr(test_set, label)).float().mean())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='out/encoders/synthetic_encoders.pt')
    parser.add_argument('--n-train', type=int, default=3000)
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    train_set = make_images(args.n_train, seed=1000 + args.seed)
    test_set = make_images(500, seed=2000 + args.seed)
    bundle, report = {}, {}
    for index, name in enumerate(LOSS_WEIGHTS):
        start = time.time()
        model, accuracy = train(name, train_set, test_set, args.epochs, args.seed + index)
        accuracy.update(probe(model, train_set, test_set))
        accuracy['seconds'] = round(time.time() - start, 1)
        report[name] = accuracy
        print(name, json.dumps(accuracy), flush=True)
        bundle[name] = {key: (value.half() if value.is_floating_point() else value)
                        for key, value in model.state_dict().items()}
    torch.save(bundle, args.out)
    with open(os.path.splitext(args.out)[0] + '.json', 'w') as handle:
        json.dump(report, handle, indent=2)
    print(f'wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KB)')


if __name__ == '__main__':
    main()
