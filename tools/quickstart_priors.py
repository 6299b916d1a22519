"""The quickstart's prior, paired per training seed: the main job trained with each flow base, then sampled from each prior.

For every variant (the flow's base and start, the training seed) this trains `fmnist_quick` as `dinof quickstart` does (in
WORK/qs-BASE-seedS, resumed), then draws the quickstart's N = 1000 samples (PC, 100 steps, sampling seed 0) from the
flow prior and from the moment Gaussian (`sampling.prior='moments'`) and scores them with the quickstart's domain
FID/KID. Rows go to OUT as they finish; a variant already in OUT is skipped. Same score network, two priors: the
difference within a row is the prior's alone, and the rows show how it varies over training seeds.

    OMP_WAIT_POLICY=PASSIVE nice python tools/quickstart_priors.py --work /tmp/qsp --out bench/quickstart/priors.json \\
        --variants standard:42,standard:1,standard:2,moments:42,moments-identity:42

A variant is BASE:SEED (Glow's own start, `flow.init=data`, as the first rows were drawn) or BASE-identity:SEED (the
identity start, `flow.init=identity`, the preset's since 2026-12-07).
"""
import argparse, json, os, sys, time
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--work', required=True, help='folder for the training runs (one per variant)')
    p.add_argument('--out', default='bench/quickstart/priors.json')
    p.add_argument('--variants', default='standard:42,standard:1,standard:2,moments:42', help='BASE:SEED pairs, comma-separated')
    p.add_argument('--n', type=int, default=1000)
    a = p.parse_args(argv)
    import torch
    from dinof.bench import QUICK_PRESET, domain_scores, generate, quickstart
    from dinof.ladder import cpu_name
    from dinof.train import find_checkpoint, load_models
    out = Path(a.out)
    rows = json.loads(out.read_text())['rows'] if out.is_file() else []
    for v in a.variants.split(','):
        name, seed = v.split(':')
        base, _, init = name.partition('-')
        init = init or 'data'
        if any((r['base'], r.get('init', 'data'), r['training_seed']) == (base, init, int(seed)) for r in rows): continue
        wd = Path(a.work) / f'qs-{name}-seed{seed}'
        t0 = time.perf_counter()
        m = quickstart(wd, n_samples=a.n, progress=False, overrides=(f'flow.base={base}', f'flow.init={init}', f'training.seed={seed}'))
        row = {'base': base, 'init': init, 'training_seed': int(seed), 'steps': m['training']['steps'], 'training_seconds': m['training']['seconds'],
               'priors': {m['sampling']['prior']: {k: m['domain'][k] for k in ('fid', 'kid', 'kid_std')} | {'nfe': m['sampling']['nfe']}}}
        models = load_models(find_checkpoint(wd))
        for prior in ('flow', 'moments'):
            if prior in row['priors']: continue
            images, nfe = generate(models, a.n, seed=0, prior=prior)
            d = domain_scores(images)
            row['priors'][prior] = {'fid': d['fid'], 'kid': d['kid'], 'kid_std': d['kid_std'], 'nfe': nfe}
        row['seconds'] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        doc = {'what': __doc__.split('\n\n')[1].replace('\n', ' '), 'preset': QUICK_PRESET, 'n': a.n, 'sampling_seed': 0,
               'cpu': cpu_name(), 'torch_threads': torch.get_num_threads(), 'rows': rows}
        tmp = out.with_suffix('.tmp'); tmp.write_text(json.dumps(doc, indent=1) + '\n'); os.replace(tmp, out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
