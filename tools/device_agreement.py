"""Do the study's cells come out the same on another device (or without `torch.compile`)?

Each cell of `dinof bench quality` that kept samples (`points/NAME/*.npz`, its first 100 images) is drawn again here, on
`--device`, from the committed models (`models/NAME.pt`) with the cell's own settings and seed, and compared pixel by pixel
with the committed images. `--fid` also re-draws the whole cell and scores it, beside the committed FID. The samples use
per-sample noise (the same on every device), so any difference is float rounding carried through the sampler.
`--redraw CELL` (e.g. `flow_tm0.8/grid-pc-uniform-nfe20-n2000-seed0`) draws a whole cell that kept no samples again
and scores it: for the GPU's PC cells, where the sampler draws fresh noise at every step, FID then against FID now.

    python tools/device_agreement.py --root bench/fashion_mnist --device cuda --fid --out agreement.json
"""
import argparse, json, sys, time
from pathlib import Path

import numpy as np
import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--root', default='bench/fashion_mnist')
    p.add_argument('--device', default=None)
    p.add_argument('--fid', action='store_true', help='re-draw and score each whole cell too')
    p.add_argument('--batch-size', type=int, default=1000)
    p.add_argument('--only', default='', help='cells whose file name contains this text')
    p.add_argument('--redraw', action='append', default=[], metavar='CELL',
                   help='MODEL/CELL (no .json) to draw whole and score, kept samples or not; repeatable')
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    from dinof.bench import domain_scores, generate, load_exported
    root, models, rows = Path(a.root), {}, []
    def cell(f: Path):
        pt = json.loads(f.with_suffix('.json').read_text())
        if pt['model'] not in models: models[pt['model']] = load_exported(root / 'models' / f'{pt["model"]}.pt', device=a.device)
        kw = dict(seed=pt['seed'], batch_size=a.batch_size, prior=pt['prior'], method=pt['method'], steps=pt['steps'],
                  schedule=pt['schedule'], **pt['sampler_settings'])
        return pt, models[pt['model']], kw
    for c in a.redraw:
        pt, m, kw = cell(root / 'points' / f'{c}.json')
        t0 = time.perf_counter()
        x, nfe = generate(m, pt['n'], **kw)
        s = domain_scores(x, device=a.device)
        row = {'cell': c, 'method': pt['method'], 'device_then': pt.get('device', 'cpu'), 'compiled_then': pt['compiled'],
               'device_now': str(next(m.score_model.parameters()).device), 'n_compared': 0, 'nfe': nfe, 'n': pt['n'],
               'fid_then': pt['fid'], 'fid_now': s['fid'], 'kid_then': pt['kid'], 'kid_now': s['kid'],
               'seconds': round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for f in sorted(root.glob('points/*/*.npz')) if not a.redraw else []:
        if a.only not in f.name: continue
        pt, m, kw = cell(f)
        with np.load(f) as z: old = torch.from_numpy(z['samples']).int()
        t0 = time.perf_counter()
        new, nfe = generate(m, len(old), **kw)
        d = (new[:, 0].int() - old).abs()
        row = {'cell': f'{pt["model"]}/{f.stem}', 'method': pt['method'], 'device_then': pt.get('device', 'cpu'), 'compiled_then': pt['compiled'],
               'device_now': str(next(m.score_model.parameters()).device), 'n_compared': len(old), 'nfe': nfe,
               'identical_pixels': float((d == 0).float().mean()), 'within_1': float((d <= 1).float().mean()),
               'mean_abs_diff': float(d.float().mean()), 'max_abs_diff': int(d.max()), 'seconds': round(time.perf_counter() - t0, 1)}
        if a.fid:
            x, _ = generate(m, pt['n'], **kw)
            s = domain_scores(x, device=a.device)
            row.update(n=pt['n'], fid_then=pt['fid'], fid_now=s['fid'], kid_then=pt['kid'], kid_now=s['kid'])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.out: Path(a.out).write_text(json.dumps(rows, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
