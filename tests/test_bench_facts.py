"""The study's figures as stored: every marked sentence of the notebooks and README is what `tools/bench_report.py` makes
from the committed data (an edited figure fails here), the committed cells belong to the committed models, a retrained
model's cells are drawn again, bits/dim are stored per image, and `write_npz` writes what numpy reads."""
import importlib.util, json, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dinof import bench

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / 'bench' / 'fashion_mnist'
TINY = ('model.nf=8', 'model.ch_mult=[1,2]', 'model.attn_resolutions=[]', 'flow.depth=1', 'flow.hidden=8', 'training.batch_size=16',
        'sampling.method=dpm1', 'sampling.steps=2', 'sampling.batch_size=8', 'training.log_freq=1', 'sde.num_scales=40')


def _report():
    spec = importlib.util.spec_from_file_location('bench_report', ROOT / 'tools' / 'bench_report.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def report():
    r = _report()
    return r, r.facts()


def _markdown(name: str) -> str:
    return '\n'.join(''.join(c['source']) for c in json.loads((ROOT / 'nbs' / name).read_text())['cells'] if c['cell_type'] == 'markdown')


@pytest.mark.parametrize('where, names', [
    ('index.ipynb', {'qs-headline', 'qs-classes', 'qs-rerun', 'qs-seeds', 'qs-variants', 'study-training', 'agreement', 'status', 'ladder', 'ladder-table', 'ladder-nets', 'qs-priors'}),
    ('12_bench.ipynb', {'qs-headline', 'qs-classes', 'qs-rerun', 'gauss-heldout', 'agreement', 'qs-priors'}),
    ('README.md', {'qs-headline', 'qs-seeds', 'qs-variants', 'status', 'ladder', 'ladder-table', 'ladder-nets'})])
def test_every_marked_sentence_is_the_stored_data(report, where, names):
    r, values = report
    text = (ROOT / where).read_text() if where.endswith('.md') else _markdown(where)
    assert names <= {m.group(1) for m in r.FACT.finditer(text)}, where
    assert r.stale(text, values) == [], f'{where}: run `make bench-report` (a figure typed by hand differs from the data)'


def test_a_figure_edited_by_hand_is_caught(report):
    r, values = report
    good = f"over <!-- fact:qs-seeds -->{values['qs-seeds']}<!-- /fact --> and <!-- fact:status -->{values['status']}<!-- /fact -->"
    assert r.stale(good, values) == []
    bad = good.replace('57.6', '55.6')
    assert [s[0] for s in r.stale(bad, values)] == ['qs-seeds']
    assert r.fill(bad, values) == good     # `make bench-report` writes it back


def test_the_facts_say_what_the_data_says(report):
    "The sentences issue 21 found wrong: ten variants (not eleven), one below the seeds' lowest; 7,134 s of training; complete."
    _, v = report
    assert v['qs-variants'].startswith('of ten variants') and "one scored below the seeds' lowest, 48.0: `optim.lr=3e-3` at 47.2" in v['qs-variants']
    assert v['study-training'].startswith('7,134 s') and v['status'].startswith('The study is complete')
    assert v['gauss-heldout'] == f"{json.loads((BENCH / 'fits' / 'dinof.json').read_text())['gaussian_bpd']:.4f}" == '2.0435'
    assert 'PC cell' in v['agreement'] and 'DPM-Solver-2' in v['agreement']
    assert v['ladder'].startswith("Of the exact prior's gain over N(0, I), the moment Gaussian recovers") and 'Over training seeds 1, 2, 42' in v['ladder']
    assert len(v['ladder'].split()) < 350   # the front page's short form (the long one: ladder_headline, 24_prior_ladder)
    rows = [l for l in v['ladder-table'].strip().splitlines() if l.startswith('| ')]
    assert len(rows) == 1 + 7 and 'exact x(t_m)' in rows[-1], v['ladder-table']   # the header and every rung at t_m = 0.6
    # the main job as the preset now trains it (the Glow on the moment base, from the identity start: bench/quickstart/metrics.json)
    assert v['qs-headline'] == 'domain FID **45.8** and KID 7.9 ± 0.8' and v['qs-classes'] == '77 to 126 per class of 1,000'
    assert v['qs-priors'].startswith('on the same trained networks (the Glow on N(0, I), training seeds 42, 1') and 'lower on every seed' in v['qs-priors']
    assert "48.0 from Glow's own start (training seed 42), 45.8 from the identity start" in v['qs-priors']


def test_the_committed_cells_belong_to_the_committed_models():
    "Every committed cell, bits/dim and fit records the `model_id` of the exported model it was drawn from."
    ids = {f.stem: bench.model_id(bench.load_exported(f)) for f in sorted((BENCH / 'models').glob('*.pt'))}
    pts = [json.loads(f.read_text()) for f in sorted(BENCH.glob('points/*/*.json'))]
    assert len(pts) >= 60 and all(p['model_id'] == ids[p['model']] for p in pts)
    for b in (json.loads(f.read_text()) for f in sorted(BENCH.glob('bpd/*.json'))):
        assert b['model_id'] == ids['dinof' if b['prior'] == 'flow' else 'baseline']
        assert len(b['bpd_each']) == b['n'] and abs(np.mean(b['bpd_each']) - b['bpd']) < 1e-5
    for f in sorted(BENCH.glob('fits/*.json')): assert json.loads(f.read_text())['model_id'] == ids[f.stem]


def test_a_retrained_model_draws_its_cells_again(tmp_path, monkeypatch):
    "Issue 21 item 4: `steps=2`, then `steps=3` in the same root retrains, re-exports and re-draws every cell; then reads them back."
    kw = dict(flow_steps=1, n=6, nfes=(3,), methods=('dpm2',), tm_sweep=(), extra_seeds=(), n_bpd=0, paper=False, n_pc=0, overrides=TINY)
    first = bench.bench_quality(tmp_path, steps=2, **kw)['points']
    assert first and {p['training_step'] for p in first} == {2}
    second = bench.bench_quality(tmp_path, steps=3, **kw)['points']
    ids = {k: bench.model_id(bench.load_exported(tmp_path / 'models' / f'{k}.pt')) for k in ('baseline', 'dinof')}
    assert len(second) == len(first) and {p['training_step'] for p in second} == {3}
    assert all(p['model_id'] == ids[p['model']] for p in second) and not {p['model_id'] for p in first} & set(ids.values())
    assert json.loads((tmp_path / 'fits' / 'dinof.json').read_text())['model_id'] == ids['dinof']
    monkeypatch.setattr(bench, 'generate', lambda *a, **k: pytest.fail('sampled again'))
    assert bench.bench_quality(tmp_path, steps=3, **kw)['points'] == second


def test_write_npz_is_what_numpy_reads(tmp_path):
    x = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    assert bench.write_npz(tmp_path / 'a.npz', [(x[:2], 7), (x[2:], 9)], 5, (2, 3), 'uint8') == 9
    with np.load(tmp_path / 'a.npz') as z: assert np.array_equal(z['samples'], x) and list(z) == ['samples']


def test_the_speed_file_has_repeats():
    sp = json.loads((BENCH / 'speed.json').read_text())
    each = sp['paper_ratio_each']
    assert len(each) >= 3 and sp['paper_ratio'] == round(float(np.median(each)), 3)

def test_the_flow_seeds_file_holds_the_ladders_own_flow_and_its_verdict():
    "The committed flow-seed comparison reuses the ladder's cells for its first flow and first moment draw, and its verdict is recomputed from its rows."
    from dinof.ladder import _apart, load_flow_seeds, load_ladder
    cells = {(c['score'], c['rung'], c.get('setting')): c for c in load_ladder(BENCH)}
    for r in load_flow_seeds(BENCH):
        tag = f"dinof-tm{r['t_m']:g}"
        assert r['flows']['42']['fid'] == cells[tag, 'glow_moments', r['setting']]['fid']
        assert r['moments']['0']['fid'] == cells[tag, 'moments_full', r['setting']]['fid']
        assert len(r['flows']) == len(r['moments']) >= 3 and len({f['flow'] for f in r['flows'].values()}) == len(r['flows'])
        assert tuple(r['verdict']) == _apart([f['fid'] for f in r['flows'].values()], [m['fid'] for m in r['moments'].values()])
