#!/usr/bin/env python3
"""The front page's evidence from the study's committed cells: `make bench-report`.

Rewrites `bench/fashion_mnist/results.json` (`dinof.bench.summarize`), the FID-vs-NFE plot (beside it and in
`nbs/images/`), the two sample grids (`nbs/images/bench_samples.png`, drawn from the committed models, seed 0), and the
table and summary between the `<!-- bench:start -->` / `<!-- bench:end -->` markers of `nbs/index.ipynb`
(`dinof.bench.results_table`, `results_summary`); then README.md. `tests/test_docs.py` checks the front page against
`results.json`, so a study commit without this step fails CI.
"""
import json, pathlib, subprocess, sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
START, END = '<!-- bench:start -->', '<!-- bench:end -->'

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
    fig, axs = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, (name, prior, title) in zip(axs, (('baseline', 'gaussian', 'baseline: N(0, I) at T'), ('dinof', 'flow', 'DiNof: flow at t_m = 0.6'))):
        d = draw(load_exported(models / f'{name}.pt'), prior, nfe=nfe, method=method, n=64, seed=0)
        s = d['images'][:, 0].numpy()
        ax.imshow(s.reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(224, 224), cmap='gray'); ax.axis('off')
        ax.set_title(f"{title}\nDPM-Solver-2 (log-SNR), NFE {d['nfe']}, seed 0", fontsize=9)
    fig.tight_layout(); fig.savefig(out, dpi=90); plt.close(fig)

def main():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from dinof.bench import plot_quality, summarize
    bench = ROOT / 'bench' / 'fashion_mnist'
    res = summarize(bench, out=bench / 'results.json')
    fig = plot_quality(res)
    for p in (bench / 'fid_vs_nfe.png', ROOT / 'nbs' / 'images' / 'fid_vs_nfe.png'): fig.savefig(p, dpi=90)
    plt.close(fig)
    sample_grids(bench / 'models', ROOT / 'nbs' / 'images' / 'bench_samples.png')
    path = ROOT / 'nbs' / 'index.ipynb'
    nb = json.loads(path.read_text(encoding='utf-8'))
    hits = [c for c in nb['cells'] if c['cell_type'] == 'markdown' and START in ''.join(c['source'])]
    if len(hits) != 1: sys.exit(f'nbs/index.ipynb: expected one markdown cell with {START}, found {len(hits)}')
    hits[0]['source'] = replace_block(''.join(hits[0]['source']), block(res)).splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'make_readme.py')], check=True)
    print(f"{len(res['points'])} cells; written {bench / 'results.json'}, the plot, the sample grids, nbs/index.ipynb and README.md")

if __name__ == '__main__': main()
