"The main job (`dinof.bench.quickstart`): every artefact and every documented field, resume, bad input; the real job (slow)."
import json, os, signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinof.bench import CONFIDENCE_BINS, Stopped, quickstart

# a network small enough for a test: two training steps, a two-step ODE solver
TINY = ('model.nf=8', 'model.ch_mult=[1,2]', 'model.attn_resolutions=[]', 'flow.depth=1', 'flow.hidden=8', 'training.batch_size=16',
        'sampling.method=dpm1', 'sampling.steps=2', 'sampling.batch_size=8', 'training.log_freq=1')
FIELDS = {'dinof_version', 'preset', 'overrides', 'seed', 'training_seed', 'domain', 'training', 'sampling', 'seconds',
          'machine', 'config', 'files'}
DOMAIN = {'fid', 'kid', 'kid_std', 'n', 'extractor', 'extractor_hash', 'reference', 'reference_n', 'mean_confidence',
          'confidence_histogram', 'class_counts', 'kid_subsets', 'kid_subset_size'}
TRAINING = {'steps', 'batch_size', 'images_seen', 'seconds', 'images_per_s', 'steps_this_run', 'resumed_from_step', 'checkpoint'}
SAMPLING = {'prior', 't_m', 'temperature', 'method', 'steps', 'schedule', 'noise_removal', 'nfe', 'n', 'ema', 'seconds', 'images_per_s'}


def test_quickstart_writes_every_artefact_and_resumes(tmp_path, capsys):
    wd = tmp_path / 'qs'
    m = quickstart(wd, steps=2, n_samples=20, seed=1, progress=False, device='cpu', overrides=TINY)
    out = capsys.readouterr().out.splitlines()
    files = {k: Path(v) for k, v in m['files'].items()}
    assert set(files) == {'grid', 'samples', 'loss', 'metrics'}
    for k, p in files.items():
        assert p.is_file() and p.parent == wd, k
        assert any(line.split() == [k, str(p)] for line in out), (k, out)      # one printed line per artefact
    # the samples: uint8, N x H x W, and the grid shows them
    with np.load(files['samples']) as z:
        s = z['samples']
    assert s.dtype == np.uint8 and s.shape == (20, 28, 28)
    assert Image.open(files['grid']).size[0] > 5 * 28 and Image.open(files['loss']).size[0] > 100
    # metrics.json holds the returned dict, with every documented field
    j = json.loads(files['metrics'].read_text())
    assert j == json.loads(json.dumps(m))
    assert FIELDS <= set(j) and DOMAIN <= set(j['domain']) and TRAINING <= set(j['training']) and SAMPLING <= set(j['sampling'])
    d = j['domain']
    assert (d['n'], d['reference_n'], d['extractor'], d['kid_subset_size']) == (20, 10_000, 'fmnist', 20)
    assert np.isfinite(d['fid']) and d['fid'] > 0 and np.isfinite(d['kid'])
    assert len(d['confidence_histogram']['bins']) == CONFIDENCE_BINS + 1 and sum(d['confidence_histogram']['counts']) == 20
    assert sum(d['class_counts']) == 20 and 0.1 <= d['mean_confidence'] <= 1
    assert (j['training']['steps'], j['training']['steps_this_run'], j['training']['resumed_from_step']) == (2, 2, 0)
    assert j['training']['images_seen'] == 2 * j['training']['batch_size']
    assert (j['sampling']['method'], j['sampling']['steps'], j['sampling']['nfe'], j['sampling']['prior']) == ('dpm1', 2, 3, 'flow')
    assert (j['seed'], j['preset'], j['overrides']) == (1, 'fmnist_quick', list(TINY))
    assert j['seconds']['total'] >= j['seconds']['training'] + j['seconds']['sampling']
    # run again: nothing left to train, the same samples; one step more: resumes from the checkpoint
    m2 = quickstart(wd, steps=2, n_samples=20, seed=1, progress=False, device='cpu', overrides=TINY)
    assert (m2['training']['steps_this_run'], m2['training']['resumed_from_step']) == (0, 2)
    with np.load(files['samples']) as z: assert np.array_equal(z['samples'], s)
    m3 = quickstart(wd, steps=3, n_samples=20, seed=1, progress=False, device='cpu', overrides=TINY)
    assert (m3['training']['steps'], m3['training']['steps_this_run'], m3['training']['resumed_from_step']) == (3, 1, 2)


def test_quickstart_minutes_caps_the_training(tmp_path):
    "With a budget too small for more, the job stops after the ten steps it times, and the next run continues."
    m = quickstart(tmp_path, steps=40, minutes=1e-4, n_samples=4, progress=False, device='cpu', overrides=TINY)
    assert (m['training']['steps'], m['training']['steps_this_run']) == (10, 10)
    m = quickstart(tmp_path, steps=40, minutes=1e-4, n_samples=4, progress=False, device='cpu', overrides=TINY)
    assert (m['training']['steps'], m['training']['resumed_from_step']) == (20, 10)


@pytest.mark.parametrize('kw, name', [
    (dict(n_samples=0), 'n_samples'), (dict(n_samples=1), 'n_samples'), (dict(n_samples=2.5), 'n_samples'),
    (dict(minutes=0), 'minutes'), (dict(minutes='5'), 'minutes'), (dict(steps=0), 'steps'), (dict(seed=-1), 'seed'),
    (dict(overrides='model.nf=8'), 'overrides'), (dict(overrides=['model.nf=x']), 'model.nf'),
    (dict(overrides=['nosuch.key=1']), 'nosuch'), (dict(device='tpu'), 'device')])
def test_quickstart_bad_input_is_one_sentence(tmp_path, kw, name):
    with pytest.raises(ValueError) as e: quickstart(tmp_path / 'w', progress=False, **kw)
    msg = str(e.value)
    assert name in msg and '\n' not in msg, msg


def test_quickstart_bad_workdir(tmp_path):
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match='workdir'): quickstart(tmp_path / 'file', progress=False)
    # a folder holding another configuration's checkpoints is refused, naming the field
    quickstart(tmp_path / 'w', steps=1, n_samples=2, progress=False, device='cpu', overrides=TINY)
    with pytest.raises(ValueError, match='model.nf'):
        quickstart(tmp_path / 'w', steps=1, n_samples=2, progress=False, device='cpu', overrides=TINY[1:] + ('model.nf=4',))


@pytest.mark.slow
def test_the_main_job_reaches_the_target(tmp_path):
    """The quickstart's target as the measurements support it (issue 21 item 11; issue 12 asked for 40, which the job misses:
    48.0 here with the moment base, 53.7 and 57.6 +- 5.6 over five training seeds with the Glow on N(0, I), see 12_bench): the real job (the preset as shipped, N = 1000) scores a
    domain FID of at most 60 against the test set, within 10 minutes (training, sampling and scoring) on a two-core CPU.
    The time is checked only where the machine was not oversubscribed when the job began: beside other work, the wall
    time is not the job's."""
    import warnings
    load = os.getloadavg()[0]
    m = quickstart(tmp_path / 'qs', progress=False)
    assert m['domain']['n'] == 1000 and m['domain']['reference_n'] == 10_000
    assert m['domain']['fid'] <= 60, m['domain']
    if load <= (os.cpu_count() or 1):     # before the job, no more work than cores (a test just before it counts as up to one each)
        assert m['seconds']['total'] <= 600, (m['seconds'], m['machine'])
    else: warnings.warn(f"the machine was shared (load {load:.1f}): the job's {m['seconds']['total']:.0f} s not held to 600")


# --- the benchmark (dinof.bench.bench_quality / summarize / plot_quality / bench_speed)
BENCH_TINY = TINY + ('sde.num_scales=40', 'sampling.batch_size=10')


@pytest.mark.slow
def test_the_study_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    "Every stage on tiny networks: the models, schedules, grid, seeds, PC settings, bits/dim, sweep and paper setting; then a rerun reads it all back."
    from dinof import bench
    kw = dict(steps=2, flow_steps=2, n=12, n_paper=6, nfes=(3, 6), methods=('pc', 'dpm2'), tm_sweep=(0.4, 0.8), extra_seeds=(1,),
              n_bpd=2, n_pc=6, overrides=BENCH_TINY)
    res = bench.bench_quality(tmp_path, **kw)
    pts = res['points']
    grid = {(p['model'], p['method'], p['nfe_target'], p['seed']) for p in pts if p['setting'] == 'grid'}
    for model in ('baseline', 'dinof'):
        for me in ('pc', 'dpm2'):
            for f in (3, 6): assert (model, me, f, 0) in grid
    assert {p['schedule'] for p in pts if p['method'] == 'dpm2' and p['nfe_target'] == 20} == set(bench.SCHEDULES)
    assert ('dinof', 'dpm2', 20, 1) in grid and ('baseline', 'pc', 100, 1) in grid   # the two cells with more seeds
    paper = {p['model']: p for p in pts if p['setting'] == 'paper'}
    assert (paper['baseline']['nfe'], paper['dinof']['nfe']) == (40, 24) and paper['baseline']['n'] == 6
    best = min((p for p in pts if p['model'].startswith('flow_tm') and p['nfe_target'] == 20), key=lambda p: p['fid'])['model']
    me = bench._best_method([p for p in pts if p['setting'] == 'grid' and p['model'] in ('baseline', 'dinof')])
    assert {k for k in grid if k[0] == best and k[2] != 20} == {(best, me, 3, 0), (best, me, 6, 0)}   # the best t_m: one method, every NFE (20: its sweep cell)
    pcs = {(p['setting'], p['model']): p for p in pts if p['setting'].startswith('pc_')}
    assert set(pcs) == {(f'pc_{s}', k) for s in bench.PC_SETTINGS for k in ('baseline', 'dinof')}
    assert pcs['pc_none', 'dinof']['nfe'] == 50 and pcs['pc_none-nr0', 'dinof']['nfe'] == 50 and pcs['pc_langevin0.05', 'dinof']['nfe'] == 50
    assert pcs['pc_langevin0.05', 'dinof']['steps'] == 25 and pcs['pc_none', 'baseline']['steps'] == 50   # Langevin: 2 evaluations a step
    assert pcs['pc_langevin0.16', 'baseline']['sampler_settings'] == bench.PC_SETTINGS['langevin0.16']
    assert set(res['fits']) == {'dinof', 'flow_tm0.4', 'flow_tm0.8'} and {b['prior'] for b in res['bpd']} == {'gaussian', 'flow'}
    assert res['runs']['baseline']['mode'] == 'score-only' and res['runs']['dinof']['mode'] == 'joint'
    assert res['runs']['flow_tm0.4']['mode'] == 'flow-only' and res['runs']['baseline']['steps'] == res['runs']['dinof']['steps'] == 2
    for p in pts: assert {'n', 'seed', 'extractor', 'fid', 'kid', 'nfe'} <= set(p)
    # the exported models load and sample
    m = bench.load_exported(tmp_path / 'models' / 'dinof.pt')
    assert m.sample(2, 'flow', method='dpm1', steps=2).samples.shape == (2, 1, 28, 28)
    # a second call samples nothing: every cell is read back
    monkeypatch.setattr(bench, 'generate', lambda *a, **k: pytest.fail('sampled again'))
    again = bench.bench_quality(tmp_path, **kw)
    assert again['points'] == pts
    bench.plot_quality(again)


def test_a_fresh_clone_samples_the_exported_models_instead_of_retraining(tmp_path, monkeypatch):
    "Without a run's checkpoints, the study reads `models/NAME.pt` when it was exported from the same config and steps; else it trains."
    from dinof import bench
    m = bench.train_model(tmp_path / 'runs' / 'a', TINY, steps=1)
    bench.export_models(m, tmp_path / 'models' / 'a.pt')
    before = (tmp_path / 'models' / 'a.pt').read_bytes()
    for f in (tmp_path / 'runs' / 'a').iterdir(): f.unlink()        # a clone: the run folder's checkpoints are not committed
    monkeypatch.setattr(bench, 'train_model', lambda *a, **k: pytest.fail('trained again'))
    got, new = bench._model(tmp_path, 'a', TINY, 1, progress=False, device='cpu')
    assert not new and got.step == 1 and (tmp_path / 'models' / 'a.pt').read_bytes() == before
    for a, b in zip(got.score_model.state_dict().values(), m.score_model.state_dict().values()): assert torch.equal(a, b)
    # another step count or another config is another model: trained
    calls = []
    monkeypatch.setattr(bench, 'train_model', lambda wd, ov, *, steps, **k: calls.append((Path(wd).name, tuple(ov), steps)) or m)
    assert bench._model(tmp_path, 'a', TINY, 2, progress=False, device='cpu') == (m, True)
    assert bench._model(tmp_path, 'a', (*TINY, 'sde.t_m=0.5'), 1, progress=False, device='cpu') == (m, True)
    assert [c[2] for c in calls] == [2, 1] and calls[1][1][-1] == 'sde.t_m=0.5'
    # with the run's checkpoint back, a resume that trains nothing rewrites neither the exported file nor run.json
    monkeypatch.undo()
    bench.train_model(tmp_path / 'runs' / 'a', TINY, steps=1)
    record = tmp_path / 'runs' / 'a' / 'run.json'
    before = record.stat().st_mtime_ns
    got, new = bench._model(tmp_path, 'a', TINY, 1, progress=False, device='cpu')
    assert not new and got.step == 1 and record.stat().st_mtime_ns == before


def test_an_exported_file_is_a_score_checkpoint(tmp_path):
    "`training.score_checkpoint` takes `export_models`' files: the score network's weights bit for bit; a flow-only export is refused by name."
    from dinof import bench
    from dinof.config import get_config
    from dinof.train import load_score_network
    m = bench.train_model(tmp_path / 'runs' / 'a', TINY, steps=1)
    bench.export_models(m, tmp_path / 'a.pt')
    cfg, net, notes = load_score_network(get_config(bench.PRESET, *TINY), tmp_path / 'a.pt')
    assert notes == [] and cfg.model.nf == 8
    ref = {k[len('net.'):]: v for k, v in m.score_model.state_dict().items() if k.startswith('net.')}
    got = net.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    # a patched network's file into an unpatched config: the file's network is adopted, `patch` included
    q = bench.train_model(tmp_path / 'runs' / 'q', (*TINY, 'model.patch=2'), steps=1)
    bench.export_models(q, tmp_path / 'q.pt')
    cfg, net, notes = load_score_network(get_config(bench.PRESET, *TINY), tmp_path / 'q.pt')
    assert (cfg.model.patch, net.patch) == (2, 2) and 'model.patch: 1 -> 2' in notes, notes
    bench.export_models(m, tmp_path / 'f.pt', score_from='a.pt')
    with pytest.raises(ValueError, match=r"f\.pt holds only a flow; its score network is in 'a\.pt'"):
        load_score_network(get_config(bench.PRESET, *TINY), tmp_path / 'f.pt')


def _signal_at(monkeypatch, step: int, sig=signal.SIGTERM):
    "Send `sig` to this process while the trainer runs step `step` (its handler asks the loop to stop after that step)."
    from dinof.train import Trainer
    real = Trainer._step
    def fake(self, s):
        if s == step: os.kill(os.getpid(), sig)
        return real(self, s)
    monkeypatch.setattr(Trainer, '_step', fake)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_job_and_a_rerun_continues(tmp_path, monkeypatch, sig):
    "SIGTERM / SIGINT during training: the checkpoint is written and the job ends (no sampling); the same call continues."
    _signal_at(monkeypatch, 2, sig)
    with pytest.raises(Stopped, match='stopped by a signal at step 2 of 4'):
        quickstart(tmp_path, steps=4, n_samples=4, progress=False, device='cpu', overrides=TINY)
    assert not (tmp_path / 'metrics.json').exists() and (tmp_path / 'ckpt_00000002.pt').is_file()
    monkeypatch.undo()
    m = quickstart(tmp_path, steps=4, n_samples=4, progress=False, device='cpu', overrides=TINY)
    assert (m['training']['steps'], m['training']['resumed_from_step']) == (4, 2)


def test_dinof_quickstart_and_bench_stop_on_a_signal_with_one_line(tmp_path, monkeypatch, capsys):
    from dinof.cli import main
    sets = [a for o in TINY for a in ('--set', o)]
    _signal_at(monkeypatch, 1)
    assert main(['quickstart', '--workdir', str(tmp_path / 'qs'), '--steps', '3', '--n', '4', '--no-progress', *sets]) == 0
    err = capsys.readouterr().err
    assert err.startswith('dinof: ') and 'stopped by a signal at step 1 of 3' in err and err.count('\n') == 1, err
    assert main(['bench', 'quality', '--root', str(tmp_path / 'b'), '--steps', '3', '--n', '4', '--no-progress', *sets]) == 0
    err = capsys.readouterr().err
    assert 'baseline: stopped by a signal at step 1 of 3' in err and err.count('\n') == 1, err
    assert not (tmp_path / 'b' / 'models').exists() and not (tmp_path / 'b' / 'runs' / 'dinof').exists()   # the study ended there


@pytest.mark.parametrize('flag,expected,bs', [((), False, None), (('--compile',), True, None), (('--batch-size', '500'), False, 500)])
def test_dinof_bench_quality_passes_compile_through(tmp_path, monkeypatch, capsys, flag, expected, bs):
    from dinof import bench
    from dinof.cli import main
    seen = {}
    def fake(root, **kw):
        seen.update(kw); return {'points': []}
    monkeypatch.setattr(bench, 'bench_quality', fake)
    assert main(['bench', 'quality', '--root', str(tmp_path / 'b'), '--no-progress', '--steps', '3', *flag]) == 0
    assert seen['compile'] is expected and seen['steps'] == 3 and seen['progress'] is False and seen['batch_size'] == bs


def test_dinof_bench_quality_refuses_a_batch_size_below_one(tmp_path, capsys):
    from dinof.cli import main
    assert main(['bench', 'quality', '--root', str(tmp_path / 'b'), '--batch-size', '0']) == 2
    err = capsys.readouterr().err
    assert '--batch-size: must be >= 1' in err and err.count('\n') == 1, err
    assert not (tmp_path / 'b').exists() or not any((tmp_path / 'b').iterdir())


def test_the_samples_do_not_depend_on_the_batch_size(tmp_path):
    "Why the study may draw its samples in batches of any size (`--batch-size`, e.g. large on a GPU): per-sample noise."
    from dinof.bench import generate
    from dinof.train import load_models, find_checkpoint
    quickstart(tmp_path / 'qs', steps=1, n_samples=2, progress=False, device='cpu', overrides=TINY)   # a trained tiny model
    models = load_models(find_checkpoint(tmp_path / 'qs'), device='cpu')
    a, nfe = generate(models, 7, seed=3, batch_size=7, prior='flow', method='pc', steps=3)
    b, _ = generate(models, 7, seed=3, batch_size=3, prior='flow', method='pc', steps=3)
    assert nfe > 0 and a.dtype == torch.uint8 and (a.int() - b.int()).abs().max() <= 1
    assert (a == b).float().mean() > 0.99


def test_the_minutes_budget_is_used_although_the_first_steps_are_slow(tmp_path, monkeypatch):
    "A slow first step (start-up) must not make the job stop far short of its budget: on a fake clock, 5 s for step 1, 0.1 s after."
    from dinof import bench
    from dinof.train import Trainer
    clock = [0.]
    monkeypatch.setattr(bench.time, 'perf_counter', lambda: clock[0])
    real = Trainer._step
    def step(self, s):
        clock[0] += 5. if s == 1 else 0.1
        return real(self, s)
    monkeypatch.setattr(Trainer, '_step', step)
    m = quickstart(tmp_path, steps=1000, minutes=0.5, n_samples=4, progress=False, device='cpu', overrides=TINY)
    # the old rule (ten steps timed, then extrapolated) stopped at 50 steps, 9.9 s of the 30
    assert 240 <= m['training']['steps'] <= 251 and clock[0] <= 30.05, (m['training']['steps'], clock[0])
