"dinof.experiments: data in the real formats, the launcher, following a run, the sample cache, FLOP counts (the GPU notebooks' pieces)."
import io, json, subprocess, sys, time
from contextlib import redirect_stdout
from pathlib import Path
import numpy as np
import pytest
import torch
from dinof import flow as flows, nets
from dinof.config import get_config
from dinof.data import Loader, get_dataset
from dinof.experiments import (_synthetic, cached_samples, count_flops, evaluate, launch, sample_cached, sample_grid,
                               smoke_overrides, train_command, watch, write_cifar10, write_image_folder)
from dinof.train import Models


def _tiny(step=3):
    cfg = get_config('ve_cifar10_ncsnpp_continuous', *smoke_overrides(), 'sampling.steps=2')
    torch.manual_seed(0)
    sde = cfg.build_sde()
    fl = flows.build(cfg.flow_dict()); fl.initialize(torch.randn(8, 3, 32, 32))
    return Models(cfg, sde, nets.ScoreModel(nets.build(cfg.model_dict()), sde, True).eval(), fl.eval(), step=step)


def test_cifar10_files_feed_the_trainers_loader(tmp_path):
    write_cifar10(tmp_path, n_train=12, n_test=3, seed=9)
    ds = get_dataset('cifar10', root=tmp_path, random_flip=False)
    want = torch.from_numpy(_synthetic(15, 32, 9)[:12]).float() / 255
    seen = torch.cat(list(Loader(ds, 4, shuffle=False, drop_last=False)))
    assert torch.equal(seen, want)


def test_image_folder_layouts(tmp_path):
    write_image_folder(tmp_path / 'faces', n=5, size=48, suffix='.png', seed=2)
    assert sorted(p.name for p in (tmp_path / 'faces').iterdir()) == [f'{i:05d}.png' for i in range(5)]
    ds = get_dataset('celebahq', root=tmp_path / 'faces', image_size=48)
    assert torch.equal(ds[4], torch.from_numpy(_synthetic(5, 48, 2)[4]).float() / 255)
    with pytest.raises(ValueError, match="suffix: must be '.jpg' or '.png'"): write_image_folder(tmp_path, suffix='.gif')


def test_dinof_train_names_a_missing_data_folder(tmp_path):
    "What the notebooks' launch cell shows when the data is not where the config says: the trainer's one line, naming the folder."
    missing = tmp_path / 'nowhere'
    cmd = train_command('ve_cifar10_ncsnpp_continuous', tmp_path / 'run', overrides=[*smoke_overrides(), f'data.root={missing}'],
                        steps=1, device='cpu')
    env = {'DINOF_DATA': str(tmp_path / 'empty_cache'), 'OMP_NUM_THREADS': '1'}
    with pytest.raises(RuntimeError, match=f'exit status 2\\): dinof: error: cifar10: no data found in {missing}/cifar-10-batches-py'):
        launch(cmd, tmp_path / 'run', env=env)


def test_missing_checkpoint_is_one_line(tmp_path):
    for f in (lambda p: sample_grid(p), lambda p: evaluate(p, tmp_path / 'eval')):
        with pytest.raises(FileNotFoundError, match=f"checkpoint: no such file or folder '{tmp_path / 'x.pt'}'"): f(tmp_path / 'x.pt')
        with pytest.raises(FileNotFoundError, match='holds no checkpoint'): f(tmp_path)


def test_watch_follows_a_run_started_before_a_kernel_restart(tmp_path):
    "The process is known only by train.pid (the Popen object died with the old kernel): watch follows it to its end."
    log = tmp_path / 'log.jsonl'
    script = f"import json, time\nfor s in range(1, 5):\n    time.sleep(0.4)\n    open({str(log)!r}, 'a').write(json.dumps({{'step': s}}) + '\\n')"
    p = launch([sys.executable, '-c', script], tmp_path, wait=False)
    del p                                                        # as after a restart
    with redirect_stdout(io.StringIO()) as out: recs = watch(tmp_path, every=0.1, display=False)
    assert [r['step'] for r in recs] == [1, 2, 3, 4]
    assert out.getvalue().splitlines() == [f'step {s}' for s in range(1, 5)]


class _Stops:
    "Models whose `sample` raises KeyboardInterrupt on call number `at` (a user stopping the cell), counting the calls."
    def __init__(self, m, at=None): self.m, self.at, self.calls = m, at, []
    def __getattr__(self, k): return getattr(self.m, k)
    def sample(self, n, **kw):
        self.calls.append(kw['first'])
        if len(self.calls) == self.at: raise KeyboardInterrupt
        return self.m.sample(n, **kw)


def test_sample_cache_resumes_after_an_interrupt(tmp_path):
    m = _tiny()
    stopped = _Stops(m, at=3)
    with pytest.raises(KeyboardInterrupt): sample_cached(stopped, 11, tmp_path / 'a', batch_size=3, seed=1, progress=False)
    assert sorted(p.name for p in (tmp_path / 'a').glob('batch_*')) == ['batch_00000.npz', 'batch_00001.npz']
    assert not list((tmp_path / 'a').glob('.*.tmp'))                          # no half-written file left
    again = _Stops(m)
    r = sample_cached(again, 11, tmp_path / 'a', batch_size=3, seed=1, progress=False)
    assert again.calls == [6, 9] and r['made'] == 2 and r['batches'] == 4
    sample_cached(m, 11, tmp_path / 'b', batch_size=3, seed=1, progress=False)
    a, b = cached_samples(tmp_path / 'a'), cached_samples(tmp_path / 'b')
    assert a.shape == (11, 3, 32, 32) and torch.equal(a, b)
    with pytest.raises(ValueError, match='other settings \\(step 3 -> 4\\)'):      # samples of another checkpoint are not mixed in
        sample_cached(_tiny(step=4), 11, tmp_path / 'a', batch_size=3, seed=1, progress=False)


def test_flop_count_by_hand():
    "A strided convolution with bias, a ReLU and a linear layer: matrix products and convolutions only, 2 per multiply-add."
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 5 * 5, 7))
    x = torch.randn(3, 2, 10, 10, requires_grad=True)                  # input gradient wanted: the conv's backward is 2x
    conv, lin = 2 * 6 * 5 * 5 * 2 * 9 * 3, 2 * 150 * 7 * 3
    assert count_flops(lambda: net(x)) == conv + lin
    assert count_flops(lambda: net(x).sum().backward()) == 3 * conv + 3 * lin


@pytest.mark.slow
def test_evaluate_with_is_weights_and_resume(tmp_path):
    "IS where pt_inception weights are present (random weights here: the wiring, not the value); a rerun reuses every batch."
    from dinof.metrics import PTInception
    from dinof.train import Trainer
    write_cifar10(tmp_path / 'data', n_train=10, n_test=2)
    cfg = get_config('ve_cifar10_ncsnpp_continuous', *smoke_overrides(), f'data.root={tmp_path / "data"}', 'training.n_iters=1')
    t = Trainer(cfg, tmp_path / 'run', device='cpu', progress=False); t.train(); t.close()
    torch.manual_seed(0); torch.save(PTInception().state_dict(), tmp_path / 'pt.pth')
    kw = dict(n=6, stats_cache=tmp_path / 'stats', is_weights=tmp_path / 'pt.pth', device='cpu', progress=False)
    r1 = evaluate(tmp_path / 'run', tmp_path / 'eval', **kw)
    r2 = evaluate(tmp_path / 'run', tmp_path / 'eval', **kw)
    assert r1['batches_made'] == 2 and r2['batches_made'] == 0
    assert r1['is'] is not None and r1['is'] >= 1 and r1['fid'] == r2['fid'] and r1['is'] == r2['is']
    assert json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['fid'] == r2['fid']


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tmp_path):
    "The notebooks' launch: two processes through torchrun, then a resume in one."
    write_cifar10(tmp_path / 'data', n_train=8, n_test=2)
    over = [*smoke_overrides(), f'data.root={tmp_path / "data"}', 'training.n_iters=3']
    env = {'OMP_NUM_THREADS': '1'}
    launch(train_command('ve_cifar10_ncsnpp_continuous', tmp_path / 'run', nproc=2, overrides=over, steps=2, device='cpu'), tmp_path / 'run', env=env)
    launch(train_command('ve_cifar10_ncsnpp_continuous', tmp_path / 'run', overrides=over, device='cpu'), tmp_path / 'run', env=env)
    with redirect_stdout(io.StringIO()): recs = watch(tmp_path / 'run', display=False)
    assert [r['step'] for r in recs] == [1, 2, 3]


def test_sample_cache_draws_in_chunks(tmp_path):
    """`sampling.chunk_size` bounds the rows one pass of the score network takes (issue 21: CelebA-HQ's 1,024 evaluation
    samples at once would need ~370 GB); without the Langevin corrector (whose step size averages norms over the pass)
    the cached images are the one-pass images to within one grey level (rounding)."""
    import dataclasses
    m, seen = _tiny(), []
    h = m.score_model.register_forward_pre_hook(lambda mod, args: seen.append(len(args[0])))
    try:
        sample_cached(m, 7, tmp_path / 'a', batch_size=7, seed=1, progress=False, corrector='none')
        assert max(seen) == 7
        seen.clear()
        chunked = dataclasses.replace(m, config=m.config.override('sampling.chunk_size=3'))
        sample_cached(chunked, 7, tmp_path / 'b', batch_size=7, seed=1, progress=False, corrector='none')
        assert seen and max(seen) == 3
    finally: h.remove()
    a, b = cached_samples(tmp_path / 'a').int(), cached_samples(tmp_path / 'b').int()
    assert a.shape == (7, 3, 32, 32) and (a - b).abs().max() <= 1
