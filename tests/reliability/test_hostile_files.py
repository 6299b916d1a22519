"""3. Hostile and broken files. A checkpoint (or weights, statistics, dataset file) that is a pickle carrying code is
refused without running it (the payload would create a marker folder); a truncated checkpoint, a checkpoint from another
config or whose contents do not fit it, a statistics `.npz` with the wrong shapes, an image folder with a corrupt image:
each is one line naming the file, exit status 2, no traceback, and nothing in the run folder is overwritten."""
import json, os, pickle, shutil
from pathlib import Path
import numpy as np
import pytest
import torch
from harness import ENV, Evil, TOY, audit, clean_error, count, dinof, lost, one_line, run_main, sets, snapshot

# ---------------------------------------------------------------- pickles carrying code
def _evil_files(d: Path, marker: Path) -> dict:
    "Every kind of file dinof reads, each a pickle whose unpickling would run `os.makedirs(marker)`."
    d.mkdir(parents=True, exist_ok=True)
    torch.save({'format': 'dinof-train-1', 'step': 99, 'x': Evil(marker)}, d / 'zip.pt')           # torch's zip format
    (d / 'legacy.pt').write_bytes(pickle.dumps({'format': 'dinof-train-1', 'x': Evil(marker)}))    # a bare pickle
    np.savez(d / 'stats.npz', mu=np.array([Evil(marker)], dtype=object), sigma=np.eye(1))
    np.savez(d / 'images.npz', images=np.array([Evil(marker)], dtype=object))
    (d / 'cifar').mkdir(exist_ok=True)
    for f in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        (d / 'cifar' / f).write_bytes(pickle.dumps({'data': Evil(marker)}, protocol=2))
    return d

HOSTILE = [  # (what is read, its command line ({d}: the folder of hostile files, {run}: a run folder), what the line must name)
    ('resume: the checkpoint `latest` names', 'train --preset toy2d --workdir {run} --resume', 'ckpt_00000016.pt'),
    ('sample --checkpoint (zip)', 'sample --checkpoint {d}/zip.pt --out {d}/s.png', 'zip.pt'),
    ('sample --checkpoint (bare pickle)', 'sample --checkpoint {d}/legacy.pt --out {d}/s.png', 'legacy.pt'),
    ('eval --checkpoint', 'eval --checkpoint {d}/zip.pt --metric bpd', 'zip.pt'),
    ('train: training.score_checkpoint', 'train --preset toy2d --workdir {d}/run2 --set training.score_checkpoint={d}/zip.pt', 'zip.pt'),
    ('fid --weights', 'fid --images {d}/ok.npz --ref {d}/ref.npz --weights {d}/zip.pt', 'zip.pt'),
    ('fid --ref (object array)', 'fid --images {d}/ok.npz --ref {d}/stats.npz', 'stats.npz'),
    ('fid --images (object array)', 'fid --images {d}/images.npz --ref {d}/ref.npz', 'images.npz'),
    # dinof.data._read_cifar_batch refuses the pickle (was: its UnpicklingError escaped as a traceback)
    ('stats: a CIFAR-10 batch file', 'stats --dataset cifar10 --data-root {d}/cifar --out {d}/o.npz', 'data_batch_1'),
]

@pytest.fixture(scope='module')
def hostile(tmp_path_factory, toy_run):
    from dinof.metrics import FIDStats, fmnist_extractor
    d = tmp_path_factory.mktemp('hostile')
    marker = d / 'PAYLOAD_RAN'
    _evil_files(d, marker)
    np.savez(d / 'ok.npz', images=np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8))
    fm = fmnist_extractor(device='cpu')
    FIDStats(np.zeros(128), np.eye(128), 10, fm.name, fm.hash, fm.preprocess).save(d / 'ref.npz')
    run = d / 'run'; shutil.copytree(toy_run[0], run)
    shutil.copy(d / 'zip.pt', run / 'ckpt_00000016.pt')          # the run's newest checkpoint, replaced
    return d, marker, run

@pytest.mark.parametrize('name, args, names', HOSTILE, ids=[c[0] for c in HOSTILE])
def test_a_pickle_carrying_code_is_refused_and_never_runs(hostile, name, args, names, capsys, monkeypatch, tmp_path):
    d, marker, run = hostile
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    before = snapshot(run)
    argv = [*args.format(d=d, run=run).split(), '--no-progress']
    if argv[0] == 'train': argv += sets(*TOY, 'training.snapshot_freq=8', 'training.n_iters=32')
    rc, out, err = run_main(argv, capsys)
    ran = marker.exists()
    ok = not ran and clean_error(rc, err) and names in err
    count('bad inputs', ok, f'hostile pickle, {name}: status {rc}, {err.strip().splitlines()[-1][:150] if err.strip() else ""!r}')
    changed = [k for k, v in snapshot(run).items() if before.get(k) != v]
    lost(len(changed), f'hostile pickle, {name}: {changed}')
    assert not ran, 'the payload ran'
    assert not changed
    assert ok, (rc, err)

def test_a_pickle_carrying_code_in_a_real_process(tmp_path):
    "The console script, as a user runs it on a downloaded checkpoint: one line, status 2, and the payload never ran."
    marker = tmp_path / 'PAYLOAD_RAN'
    _evil_files(tmp_path / 'f', marker)
    r = dinof('sample', '--checkpoint', tmp_path / 'f' / 'zip.pt', '--out', tmp_path / 's.png')
    ok = clean_error(r.returncode, r.stderr, 'dinof: error: checkpoint: ') and not marker.exists()
    count('bad inputs', ok, f'hostile pickle, real process: {r.returncode} {r.stderr[-300:]!r}')
    assert ok, (r.returncode, r.stderr)
    assert not (tmp_path / 's.png').exists()

# ---------------------------------------------------------------- truncated checkpoints
@pytest.mark.parametrize('frac', [0, 1e-6, 0.001, 0.01, 0.1, 0.5, 0.9, 0.999, -1])
def test_a_truncated_checkpoint_is_one_line(toy_run, frac, tmp_path, capsys):
    "Cut anywhere (nothing, inside the zip header, the pickle, a tensor, the central directory): `dinof sample` says so in one line."
    raw = (toy_run[0] / 'ckpt_00000016.pt').read_bytes()
    n = len(raw) - 1 if frac == -1 else int(len(raw) * frac)
    (tmp_path / 'cut.pt').write_bytes(raw[:n])
    rc, out, err = run_main(['sample', '--checkpoint', tmp_path / 'cut.pt', '--out', tmp_path / 's.png', '--no-progress'], capsys)
    ok = clean_error(rc, err, f'dinof: error: checkpoint: {tmp_path}/cut.pt is not readable')
    count('bad inputs', ok, f'checkpoint cut at byte {n}: status {rc}, {err[-200:]!r}')
    assert ok, (rc, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cut.pt']

# ---------------------------------------------------------------- a checkpoint from another config, or not fitting its own
def test_a_checkpoint_of_another_config_is_refused_naming_the_fields(toy_run, tmp_path, capsys):
    "A run folder whose checkpoint came from another toy config (a deeper flow): the resume names the field, writes nothing."
    from dinof.config import get_config
    from dinof.train import Trainer
    other = get_config('toy2d', *TOY, 'flow.depth=4', 'training.n_iters=2')
    Trainer(other, tmp_path / 'other', progress=False).train()
    run = tmp_path / 'run'; shutil.copytree(toy_run[0], run)
    shutil.copy(tmp_path / 'other' / 'ckpt_00000002.pt', run / 'ckpt_00000016.pt')
    before = snapshot(run)
    rc, out, err = run_main(['train', '--preset', 'toy2d', '--workdir', run, '--resume', '--no-progress',
                             *sets(*TOY, 'training.snapshot_freq=8', 'training.n_iters=24')], capsys)
    ok = clean_error(rc, err, f'dinof: error: checkpoint: {run}/ckpt_00000016.pt was made for another config') and 'flow.depth (4 -> 8)' in err
    count('bad inputs', ok, f'checkpoint of another config: {rc} {err!r}')
    assert ok, (rc, err)
    assert snapshot(run) == before

def test_a_score_checkpoint_for_another_problem_is_refused(toy_run):
    "training.score_checkpoint: a toy 2-D network offered to an image config."
    from dinof.config import get_config
    from dinof.train import load_score_network
    with pytest.raises(ValueError) as e: load_score_network(get_config('fmnist_small'), toy_run[0] / 'ckpt_00000016.pt')
    ok = one_line(str(e.value)) and str(e.value).startswith('training.score_checkpoint: ') and 'another problem' in str(e.value)
    count('bad inputs', ok, f'score checkpoint of another problem: {e.value}')
    assert ok, str(e.value)

def _damage(ck: dict, how: str) -> dict:
    ck = dict(ck)
    if how == 'weights of another network':
        from dinof.config import Config
        d = json.loads(ck['config']); d['model']['hidden'] = 64; ck['config'] = Config.from_dict(d).to_json()
    elif how == 'config not JSON': ck['config'] = '{"data": '
    elif how == 'step not a number': ck['step'] = 'many'
    else: del ck[how.split()[1]]                       # 'no rng', 'no step', 'no ema_flow'
    return ck

DAMAGE = ['weights of another network', 'no ema_flow', 'no rng', 'no step', 'config not JSON', 'step not a number']
# load_checkpoint checks the entries and their types, load_models wraps load_state_dict, Trainer._load the RNG state
# (were: tracebacks, or messages that did not name the file, for all but a resume of another network's / without ema_flow)

@pytest.mark.parametrize('use', ['resume', 'sample'])
@pytest.mark.parametrize('how', DAMAGE)
def test_a_checkpoint_whose_contents_do_not_fit_is_one_line(toy_run, tmp_path, capsys, how, use):
    if (use, how) == ('sample', 'no rng'): pytest.skip('sampling does not need the RNG state: the file is usable')
    from dinof.train import load_checkpoint
    run = tmp_path / 'run'; shutil.copytree(toy_run[0], run)
    torch.save(_damage(load_checkpoint(run / 'ckpt_00000016.pt'), how), run / 'ckpt_00000016.pt')
    before = snapshot(run)
    if use == 'resume': argv = ['train', '--preset', 'toy2d', '--workdir', run, '--resume', *sets(*TOY, 'training.n_iters=24')]
    else: argv = ['sample', '--checkpoint', run, '--out', tmp_path / 's.png', '--steps', '2']
    rc, out, err = run_main([*argv, '--no-progress'], capsys)
    ok = clean_error(rc, err) and 'ckpt_00000016.pt' in err
    count('bad inputs', ok, f'checkpoint with {how}, {use}: status {rc}, {err.strip().splitlines()[-1][:120] if err.strip() else ""!r}')
    assert snapshot(run) == before
    assert ok, (rc, err)

# Trainer.save prunes only checkpoints up to the one it wrote (was: by step number over every ckpt_*.pt, so a stray newer
# file survived while the run's own were deleted early)
def test_pruning_keeps_this_runs_checkpoints_beside_a_stray_newer_one(toy_run, tmp_path):
    "keep=3: a run resumed from step 16 of a folder that also holds a step-99 file keeps its own 16, 24, 32."
    from dinof.config import get_config
    from dinof.train import Trainer
    run = tmp_path / 'run'; shutil.copytree(toy_run[0], run)
    shutil.copy(run / 'ckpt_00000008.pt', run / 'ckpt_00000099.pt')     # a stray file (e.g. of a longer, abandoned run)
    Trainer(get_config('toy2d', *TOY, 'training.snapshot_freq=8', 'training.n_iters=32'), run, progress=False, resume=run / 'ckpt_00000016.pt').train()
    own = sorted(int(p.name[5:-3]) for p in run.glob('ckpt_*.pt'))
    lost(int(16 not in own), f'stray newer checkpoint: the run kept {own}')
    assert own == [16, 24, 32, 99], own

# ---------------------------------------------------------------- statistics files with the wrong shapes
# the last five were bugs: refused after every image was featurised with a message that did not name the file, or (a
# non-symmetric / negative covariance) not at all; now dinof.metrics checks the file's dimension against the extractor's
# first, and _as_f64 / _check_gaussian refuse non-numbers, no features, and matrices that are no covariance
WRONG_STATS = [  # (name, mu, sigma)
    ('mu a matrix', np.zeros((1, 128)), np.eye(128)),
    ('sigma not square', np.zeros(128), np.zeros((128, 127))),
    ('sigma of another size than mu', np.zeros(128), np.eye(64)),
    ('sigma a number', np.zeros(128), np.float64(1)),
    ('NaN in sigma', np.zeros(128), np.full((128, 128), np.nan)),
    ('64 features for a 128-feature extractor', np.zeros(64), np.eye(64)),
    ('no features', np.zeros(0), np.zeros((0, 0))),
    ('strings', np.array(['a'] * 128), np.eye(128)),
    ('a negative covariance', np.zeros(128), -np.eye(128)),
    ('a non-symmetric matrix', np.zeros(128), np.eye(128) + np.triu(np.ones((128, 128)), 1)),
]

@pytest.mark.parametrize('name, mu, sigma', WRONG_STATS, ids=[c[0] for c in WRONG_STATS])
def test_statistics_with_the_wrong_shapes_are_one_line(hostile, name, mu, sigma, tmp_path, capsys):
    "`dinof fid --ref`: a stats file that carries the fmnist extractor's identity but not its statistics."
    from dinof.metrics import fmnist_extractor
    d = hostile[0]
    fm = fmnist_extractor(device='cpu')
    ref = tmp_path / 'ref.npz'
    np.savez(ref, mu=mu, sigma=sigma, n=np.int64(10), extractor=np.str_(fm.name), extractor_hash=np.str_(fm.hash), preprocess=np.str_(fm.preprocess))
    before = snapshot(tmp_path)
    rc, out, err = run_main(['fid', '--images', d / 'ok.npz', '--ref', ref, '--no-progress'], capsys)
    ok = clean_error(rc, err) and str(ref) in err
    count('bad inputs', ok, f'stats with {name}: status {rc}, {err.strip()[:120]!r}')
    assert snapshot(tmp_path) == before
    assert ok, (rc, out, err)

# ---------------------------------------------------------------- a dataset folder with a corrupt image
def _folder(root: Path, n=40, size=32):
    "`n` grey PNGs, and one more whose header is sound and whose pixels are cut off (it passes a header scan)."
    from PIL import Image
    root.mkdir(parents=True)
    g = np.random.default_rng(0)
    for i in range(n): Image.fromarray(g.integers(0, 256, (size, size), dtype=np.uint8)).save(root / f'{i:03d}.png')
    raw = (root / '000.png').read_bytes()
    (root / '017b.png').write_bytes(raw[:len(raw) // 2])
    return root / '017b.png'

TINY_IMAGES = ['--preset', 'fmnist_small', '--no-progress', *sets(
    'data.dataset=image_folder', 'model.nf=8', 'model.ch_mult=[1]', 'model.num_res_blocks=1', 'model.attn_resolutions=[]',
    'flow.levels=1', 'flow.depth=1', 'flow.hidden=8', 'training.batch_size=8', 'training.n_iters=12', 'training.snapshot_freq=4')]

# 'train, 1 worker' was a bug: torch's 'Caught ValueError in DataLoader worker process 0. Original Traceback ...' folded into
# one line; dinof.data.Loader now hands the worker's exception back and raises it again
@pytest.mark.parametrize('how', ['fid --images', 'stats', 'train', 'train, 1 worker'])
def test_a_corrupt_image_in_a_folder_is_one_line(how, tmp_path, capsys, monkeypatch, hostile):
    d = hostile[0]
    bad = _folder(tmp_path / 'imgs')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    wd = tmp_path / 'run'
    if how == 'fid --images': argv = ['fid', '--images', tmp_path / 'imgs', '--ref', d / 'ref.npz', '--batch-size', '8']
    elif how == 'stats': argv = ['stats', '--dataset', 'image_folder', '--data-root', tmp_path / 'imgs', '--image-size', '32',
                                 '--num-channels', '1', '--extractor', 'fmnist', '--out', tmp_path / 'o.npz', '--batch-size', '8']
    else: argv = ['train', *TINY_IMAGES, *sets(f'data.root={tmp_path / "imgs"}', f'training.num_workers={int("worker" in how)}'), '--workdir', wd]
    rc, out, err = run_main([*argv, '--no-progress'], capsys)
    ok = clean_error(rc, err) and f'{bad}: not a readable image' in err
    count('bad inputs', ok, f'corrupt image, {how}: status {rc}, {err.strip()[:160]!r}')
    assert not (tmp_path / 'o.npz').exists() and not list((tmp_path / 'cache').rglob('*.npz'))   # no statistics written or cached
    assert ok, (rc, err)
