"""How much of DiNof's error is its prior? Start the reverse process from the true law of x(t_m) instead.

`DataPrior` (`dinof.ladder.ExactPrior`) draws x(t_m) exactly: training images pushed through the forward SDE to t_m (alpha(t_m) x0 + sigma(t_m) z).
Each model of the study (`models/NAME.pt`) then samples from it with PC over [eps, t_m], and the samples are scored as the
study scores its cells (domain FID and KID against the test set, so the training images that start the process are not the
reference). Beside the study's own cells this separates the two errors: DiNof from its flow against DiNof from the exact
x(t_m) is the price of the learned prior; the baseline from the exact x(t_m) is its score network on [eps, t_m] alone.

    python tools/oracle_prior.py --root bench/fashion_mnist --device cuda --out bench/fashion_mnist/oracle_prior.json
"""
import argparse, json, sys, time
from pathlib import Path

import torch

from dinof.ladder import ExactPrior as DataPrior, training_images   # the exact x(t_m), shared with the prior ladder (dinof.ladder)


def oracle_cell(models, n: int, steps: int, t_m: float, *, seed: int = 0, batch_size: int = 1000, device=None) -> dict:
    from dinof.bench import domain_scores, model_id
    from dinof.core import to_uint8
    from dinof.sampling import hybrid_sample
    centered = models.config.resolved().data.centered
    x0 = training_images(n, centered, seed)
    dev = next(models.score_model.parameters()).device
    kw = {**models.config.sampling_kwargs(), 'method': 'pc', 'steps': steps, 'schedule': 'uniform'}
    t0, out = time.perf_counter(), []
    for first in range(0, n, batch_size):
        prior = DataPrior(x0[first:first + batch_size], models.sde, t_m)
        r = hybrid_sample(prior, models.sde, models.score_model, len(prior.x0), seed=seed, first=first, device=dev, **kw)
        out.append(to_uint8(r.samples.cpu(), centered))
    secs = time.perf_counter() - t0
    d = domain_scores(torch.cat(out), device=device)
    return {'start': 'exact x(t_m) from training images', 't_m': t_m, 'method': 'pc', 'steps': steps, 'nfe': r.nfe, 'n': n,
            'seed': seed, 'fid': d['fid'], 'kid': d['kid'], 'kid_std': d['kid_std'], 'extractor': d['extractor'],
            'reference': d['reference'], 'sampling_seconds': round(secs, 2), 'device': dev.type, 'model_id': model_id(models)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--root', default='bench/fashion_mnist')
    p.add_argument('--device', default=None)
    p.add_argument('--cells', default='600:1000,200:2000', help='STEPS:N pairs, comma-separated')
    p.add_argument('--batch-size', type=int, default=1000)
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    from dinof.bench import load_exported
    root = Path(a.root)
    models = {k: load_exported(root / 'models' / f'{k}.pt', device=a.device) for k in ('baseline', 'dinof')}
    t_m = models['dinof'].t_m
    rows = []
    for cell in a.cells.split(','):
        steps, n = (int(v) for v in cell.split(':'))
        for k, m in models.items():
            rows.append({'model': k, **oracle_cell(m, n, steps, t_m, batch_size=a.batch_size, device=a.device)})
            print(json.dumps(rows[-1]), flush=True)
            if a.out: Path(a.out).write_text(json.dumps(rows, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
