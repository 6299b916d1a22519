#!/usr/bin/env python3
"""The front page's evidence from the study's committed cells: `make bench-report`.

Rewrites `bench/fashion_mnist/results.json` (`dinof.bench.summarize`), the FID-vs-NFE plot (beside it and in
`nbs/images/`), the two sample grids (`nbs/images/bench_samples.png`, drawn from the committed models, seed 0), and the
table and summary between the `<!-- bench:start -->` / `<!-- bench:end -->` markers of `nbs/index.ipynb`
(`dinof.bench.results_table`, `results_summary`); then every sentence marked `<!-- fact:NAME -->...<!-- /fact -->` in
the notebooks of `FACT_NOTEBOOKS` from the stored data (`facts`), then README.md. `tests/test_docs.py` checks the front
page against `results.json` and `tests/test_bench_facts.py` each marked sentence against `facts()`, so a study commit
without this step, or a figure edited by hand, fails CI.
"""
import json, pathlib, re, subprocess, sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
START, END = '<!-- bench:start -->', '<!-- bench:end -->'
FACT = re.compile(r'<!-- fact:([\w.-]+) -->(.*?)<!-- /fact -->', re.S)
FACT_NOTEBOOKS = ('index.ipynb', '12_bench.ipynb', '21_fashion_mnist.ipynb')
SEED_SWEEP = ROOT / 'bench' / 'quickstart' / 'sweep.json'
_WORDS = dict(enumerate('no one two three four five six seven eight nine ten eleven twelve'.split()))
_KNOBS = {'optim.lr': 'learning rate', 'training.ema_rate': 'EMA', 'model.nf': 'width', 'model.num_res_blocks': 'depth',
          'training.batch_size': 'batch', 'flow.depth': 'flow size', 'flow.hidden': 'flow size', 'sde.t_m': '$t_m$'}

def _seed_facts(sweep: dict) -> dict:
    "The quickstart's spread over training seeds, and the variants around the preset against it (`bench/quickstart/sweep.json`)."
    from dinof.bench import training_spread
    sp = training_spread(SEED_SWEEP)
    base = next(r for r in sweep['rows'] if r['name'] == 'base')
    extra = lambda r: [o for o in r['overrides'] if o not in base['overrides']]
    variants = [r for r in sweep['rows'] if r['name'] != 'base' and not all(o.startswith('training.seed=') for o in extra(r))]
    below = sorted((r for r in variants if r['fid'] < sp['min']), key=lambda r: r['fid'])
    knobs = list(dict.fromkeys(_KNOBS.get(o.split('=')[0], o.split('=')[0]) for r in variants for o in extra(r)))
    v = (f"of {_WORDS.get(len(variants), len(variants))} variants around the preset ({', '.join(knobs)}; one training seed each), "
         + (f"{_WORDS.get(len(below), len(below))} scored below the seeds' lowest, {sp['min']:.1f}: "
            + ', '.join(f"`{' '.join(extra(r))}` at {r['fid']:.1f}" for r in below) if below else f"none scored below the seeds' lowest, {sp['min']:.1f}"))
    return {'qs-seeds': f"over {_WORDS.get(sp['n'], sp['n'])} training seeds the same job scores {sp['mean']:.1f} ± {sp['sd']:.1f} "
                        f"({sp['min']:.1f} to {sp['max']:.1f}; trained on a lent GPU as a stand-in for this machine, with the steps that fit its budget)",
            'qs-variants': v}

def _prior_facts(path: pathlib.Path) -> dict:
    "The quickstart's prior, paired per training seed (`tools/quickstart_priors.py`, `bench/quickstart/priors.json`)."
    import statistics
    rows = json.loads(path.read_text())['rows']
    _fids = lambda rs, prior: ', '.join(f"{r['priors'][prior]['fid']:.1f}" for r in rs)
    std = [r for r in rows if r['base'] == 'standard']
    d = [r['priors']['flow']['fid'] - r['priors']['moments']['fid'] for r in std]
    s = (f"on the same trained networks (the Glow on N(0, I), training seeds {', '.join(str(r['training_seed']) for r in std)}; this CPU), "
         f"sampling from the moment Gaussian instead of the Glow takes FID from {_fids(std, 'flow')} to {_fids(std, 'moments')}")
    if len(d) > 1: s += (f": {statistics.mean(d):.1f} ± {statistics.stdev(d):.1f} lower (mean ± sd over training seeds), "
                         + ('lower on every seed' if all(x > 0 for x in d) else f'lower on {sum(x > 0 for x in d)} of {len(d)} seeds'))
    mb = [r for r in rows if r['base'] == 'moments']
    start = {'data': "from Glow's own start", 'identity': 'from the identity start, as the preset now trains it'}
    if mb: s += '; the Glow on the moment base: ' + ', '.join(f"{r['priors']['flow']['fid']:.1f} {start[r.get('init', 'data')]} (training seed {r['training_seed']})" for r in mb)
    return {'qs-priors': s}

def _agreement(bench: pathlib.Path) -> str:
    "What `tools/device_agreement.py` found for the cells drawn on a GPU and drawn again on this CPU."
    rows = [{'method': r['cell'].split('/')[1].split('-')[1], **r} for r in json.loads((bench / 'device_agreement.json').read_text())]
    px = [r for r in rows if r['device_then'] != r['device_now'] and r.get('n_compared')]
    whole = [r for r in rows if r['device_then'] != r['device_now'] and 'fid_now' in r and not r.get('n_compared')]
    names = {'dpm2': 'DPM-Solver-2', 'heun': 'Heun', 'pc': 'PC'}
    s = (f"drawn again on this CPU, the first {px[0]['n_compared']} images of {'each of the ' + str(len(px)) if len(px) > 1 else 'the'} GPU "
         f"cell{'s' if len(px) > 1 else ''} that kept samples ({', '.join(sorted({names[r['method']] for r in px}))}) match to within "
         f"{max(r['max_abs_diff'] for r in px)} grey level{'s' if max(r['max_abs_diff'] for r in px) > 1 else ''}, at least "
         f"{100 * min(r['identical_pixels'] for r in px):.2f}% of pixels exactly") if px else 'no GPU cell that kept samples was drawn again'
    for r in whole:
        s += (f"; a GPU {names[r['method']]} cell, whose sampler draws fresh noise at every step ({r['cell']}, NFE {r['nfe']}, N = {r['n']}), "
              f"drawn again whole on this CPU scores FID {r['fid_now']:.3f} against {r['fid_then']:.3f} on the GPU")
    return s

def facts(root: pathlib.Path = ROOT) -> dict:
    "Every marked sentence of the notebooks, from the stored data: `{name: text}`."
    from dinof.bench import summarize, results_summary
    bench = root / 'bench' / 'fashion_mnist'
    res = summarize(bench, seed_sweep=SEED_SWEEP)
    out = _seed_facts(json.loads(SEED_SWEEP.read_text()))
    secs = sum(r['seconds'] for r in res['runs'].values())
    out['study-training'] = f"{secs:,.0f} s, {secs / 3600:.1f} hours, as it ran, the machine shared"
    out['agreement'] = _agreement(bench)
    todo = re.search(r'Still to come: ([^.]*)\.', results_summary(res))
    out['status'] = (f"The study is still running: still to come, {todo.group(1)}." if todo else
                     f"The study is complete ({len(res['points'])} cells, bits/dim, the priors' fits and the speed in `bench/fashion_mnist`).")
    out['gauss-heldout'] = f"{res['fits']['dinof']['gaussian_bpd']:.4f}"
    from dinof.ladder import ladder_brief, ladder_rows, ladder_table, load_flow_seeds, load_ladder, sampling_spread
    cells, spread = load_ladder(bench), sampling_spread(bench)
    out['ladder'] = ladder_brief(cells, spread, load_flow_seeds(bench)) or 'No ladder cells are stored yet.'
    out['ladder-table'] = '\n\n' + ladder_table(cells) + '\n\n'   # a block of its own: blank lines around it
    fid = lambda tag: next((r['dpm2']['fid'] for r in ladder_rows(cells, tag) if r['rung'] == 'moments_full' and 'dpm2' in r), None)
    d, b = fid('dinof'), fid('baseline-tm0.6')
    out['ladder-nets'] = ('the ladder has not drawn both score networks from the moment Gaussian yet' if None in (d, b) else
                          f"from the moment Gaussian at 0.6 the two score networks score {d:.1f} (DiNof's) and {b:.1f} (the baseline's), "
                          f"one training seed each, a gap of {b - d:.1f} against a sampling-seed sd of {spread['dpm2']:.1f}")
    sp = res['speed']
    out['speed-ratio'] = f"{sp['paper_ratio']:.2f}"
    if (pq := root / 'bench' / 'quickstart' / 'priors.json').is_file(): out.update(_prior_facts(pq))
    qs = root / 'bench' / 'quickstart' / 'metrics.json'
    if qs.is_file():
        q = json.loads(qs.read_text()); d = q['domain']
        out['qs-headline'] = (f"domain FID **{d['fid']:.1f}** and KID {d['kid']:.1f} ± {d['kid_std']:.1f}")
        out['qs-classes'] = f"{min(d['class_counts'])} to {max(d['class_counts'])} per class of {d['n']:,}"
        out['qs-rerun'] = (f"`bench/quickstart/metrics.json` holds the run quoted here ({q['training']['steps']:,} steps; training "
                           f"{q['training']['seconds']:.0f} s, sampling {q['sampling']['seconds']:.0f} s, scoring {q['seconds']['scoring']:.0f} s, "
                           f"the cores shared with other jobs)")
    return out

def fill(text: str, values: dict, where: str = '') -> str:
    "`text` with each marked sentence replaced by its value; an unknown name stops the report."
    def one(m):
        if m.group(1) not in values: sys.exit(f'{where}: no fact named {m.group(1)!r} (tools/bench_report.py knows {sorted(values)})')
        return f'<!-- fact:{m.group(1)} -->{values[m.group(1)]}<!-- /fact -->'
    return FACT.sub(one, text)

def stale(text: str, values: dict) -> list[tuple[str, str, str]]:
    "The marked sentences of `text` that differ from `values`: `(name, text, generated)` (unknown names included)."
    return [(m.group(1), m.group(2), values.get(m.group(1), '<no such fact>')) for m in FACT.finditer(text)
            if values.get(m.group(1)) != m.group(2)]

def fill_notebooks(values: dict):
    for name in FACT_NOTEBOOKS:
        path = ROOT / 'nbs' / name
        nb = json.loads(path.read_text(encoding='utf-8'))
        for c in nb['cells']:
            if c['cell_type'] == 'markdown' and FACT.search(src := ''.join(c['source'])):
                c['source'] = fill(src, values, name).splitlines(keepends=True)
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')

def block(res: dict) -> str:
    from dinof.bench import results_summary, results_table
    return f'{START}\n{results_table(res)}\n\n{results_summary(res)}\n{END}'

def replace_block(text: str, new: str) -> str:
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i: sys.exit(f'nbs/index.ipynb: no {START} ... {END} block in its markdown')
    return text[:i] + new + text[j + len(END):]

def sample_grids(models: pathlib.Path, out: pathlib.Path, nfe: int = 20, method: str = 'dpm2'):
    "64 samples of each committed model side by side, the same sampler, budget and seed."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from dinof.bench import load_exported
    from dinof.explorer import draw
    names = {'dpm2': 'DPM-Solver-2', 'heun': 'Heun', 'pc': 'PC'}
    grids = {'logsnr': 'log-SNR', 'uniform': 'uniform', 'edm': 'EDM'}
    fig, axs = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, (name, prior, title) in zip(axs, (('baseline', 'gaussian', 'baseline: N(0, I) at T'), ('dinof', 'flow', 'DiNof: flow at t_m = 0.6'))):
        d = draw(load_exported(models / f'{name}.pt'), prior, nfe=nfe, method=method, n=64, seed=0)
        s = d['images'][:, 0].numpy()
        ax.imshow(s.reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(224, 224), cmap='gray'); ax.axis('off')
        ax.set_title(f"{title}\n{names.get(method, method)} ({grids.get(d['schedule'], d['schedule'])}), NFE {d['nfe']}, seed 0", fontsize=9)
    fig.tight_layout(); fig.savefig(out, dpi=90); plt.close(fig)

def ladder_figure(root: pathlib.Path = ROOT):
    "The front page's figure of the prior ladder (`dinof.ladder.plot_ladder`: FID against held-out bits/dim, per setting)."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from dinof.ladder import load_ladder, plot_ladder
    fig = plot_ladder(load_ladder(root / 'bench' / 'fashion_mnist'))
    fig.savefig(root / 'nbs' / 'images' / 'prior_ladder.png', dpi=80); plt.close(fig)

def main():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from dinof.bench import plot_quality, summarize
    bench = ROOT / 'bench' / 'fashion_mnist'
    res = summarize(bench, out=bench / 'results.json', seed_sweep=SEED_SWEEP)
    fig = plot_quality(res)
    for p in (bench / 'fid_vs_nfe.png', ROOT / 'nbs' / 'images' / 'fid_vs_nfe.png'): fig.savefig(p, dpi=90)
    plt.close(fig)
    sample_grids(bench / 'models', ROOT / 'nbs' / 'images' / 'bench_samples.png')
    ladder_figure()
    path = ROOT / 'nbs' / 'index.ipynb'
    nb = json.loads(path.read_text(encoding='utf-8'))
    hits = [c for c in nb['cells'] if c['cell_type'] == 'markdown' and START in ''.join(c['source'])]
    if len(hits) != 1: sys.exit(f'nbs/index.ipynb: expected one markdown cell with {START}, found {len(hits)}')
    hits[0]['source'] = replace_block(''.join(hits[0]['source']), block(res)).splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    fill_notebooks(facts())
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'make_readme.py')], check=True)
    print(f"{len(res['points'])} cells; written {bench / 'results.json'}, the plot, the sample grids, nbs/index.ipynb and README.md")

if __name__ == '__main__': main()
