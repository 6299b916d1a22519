"""`dinof stats` / `dinof fid` on Fashion-MNIST's test split with the fast classifier extractor: the main paths as a user
runs them (subprocess), the argument checks in-process through `dinof.cli.main` (the same code, without the start-up cost).
Also: a folder of more images than the process may open files (streaming), two image folders under one dataset name
(the statistics cache), and 32x32 padded images scored as the 28x28 originals."""
import gzip, os, resource, subprocess, sys, sysconfig
from pathlib import Path
import numpy as np
import pytest
from dinof.cli import main

FMNIST = Path('/usr/share/datasets/fashion-mnist')
needs_fmnist = pytest.mark.skipif(not (FMNIST / 't10k-images-idx3-ubyte.gz').is_file(), reason='Debian Fashion-MNIST not installed')


def dinof_cmd(*args, env=None, max_open_files=None):
    exe = os.path.join(sysconfig.get_path('scripts'), 'dinof')
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))) if max_open_files else None
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, preexec_fn=limit)


def _test_images(n):
    with gzip.open(FMNIST / 't10k-images-idx3-ubyte.gz') as f: raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]


def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith('dinof: error:') and r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr, r.stderr
    for w in words: assert w in r.stderr, (w, r.stderr)


def _main(capsys, *args):
    "dinof.cli.main in-process -> (status, stdout, stderr); argparse's own errors exit through SystemExit."
    capsys.readouterr()
    try: rc = main([str(a) for a in args])
    except SystemExit as e: rc = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp('cli')
    env = dict(os.environ, XDG_CACHE_HOME=str(d / 'cache'), DINOF_DEVICE='cpu')
    r = dinof_cmd('stats', '--dataset', 'fashion_mnist', '--split', 'test', '--extractor', 'fmnist', '--out', d / 'ref.npz',
                  '--no-progress', env=env)
    assert r.returncode == 0, r.stderr
    assert 'N=10000' in r.stdout and 'extractor fmnist:' in r.stdout
    np.savez(d / 'samples.npz', samples=_test_images(300))
    return env, d, d / 'ref.npz'


@needs_fmnist
def test_stats_writes_caches_and_never_overwrites(setup, capsys, monkeypatch):
    env, d, ref = setup
    with np.load(ref) as z:
        assert z['mu'].shape == (128,) and z['sigma'].shape == (128, 128) and int(z['n']) == 10000
        assert str(z['extractor']) == 'fmnist' and str(z['preprocess']) == 'crop28'
    cached = list((d / 'cache' / 'dinof' / 'stats').glob('fashion_mnist-test-fmnist-crop28-*.npz'))
    assert len(cached) == 1
    _one_line_error(dinof_cmd('stats', '--dataset', 'fashion_mnist', '--split', 'test', '--extractor', 'fmnist', '--out', ref,
                              env=env), 'exists', '--force')
    mtime = cached[0].stat().st_mtime_ns
    monkeypatch.setenv('XDG_CACHE_HOME', env['XDG_CACHE_HOME'])
    r = _main(capsys, 'stats', '--dataset', 'fashion_mnist', '--split', 'test', '--extractor', 'fmnist', '--out', d / 'again.npz',
              '--no-progress')
    assert r.returncode == 0 and 'N=10000' in r.stdout, r.stderr
    assert cached[0].stat().st_mtime_ns == mtime       # served from the cache, not recomputed
    with np.load(ref) as a, np.load(d / 'again.npz') as b: assert np.array_equal(a['sigma'], b['sigma'])
    r = _main(capsys, 'stats', '--dataset', 'fashion_mnist', '--split', 'test', '--extractor', 'fmnist', '--out', ref,
              '--force', '--no-progress')
    assert r.returncode == 0 and 'N=10000' in r.stdout, r.stderr
    assert cached[0].stat().st_mtime_ns != mtime       # --force: recomputed and rewritten


@needs_fmnist
def test_fid_npz_and_folder(setup, capsys):
    from PIL import Image
    env, d, ref = setup
    r = dinof_cmd('fid', '--images', d / 'samples.npz', '--ref', ref, env=env)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith('FID'))
    assert 'extractor fmnist:' in line and 'N=300' in line and 'ref N=10000' in line
    assert 0 < float(line.split()[1]) < 50             # 300 test images against the whole test split
    assert any(l.startswith('IS ') and 'N=300' in l for l in r.stdout.splitlines())
    folder = d / 'pngs'; folder.mkdir()
    for k, im in enumerate(_test_images(40)): Image.fromarray(im[0]).save(folder / f'{k:04d}.png')
    rf = dinof_cmd('fid', '--images', folder, '--ref', ref, '--no-progress', env=env)
    assert rf.returncode == 0 and 'N=40' in rf.stdout, rf.stderr
    np.savez(d / 'first40.npz', images=_test_images(40))
    assert _main(capsys, 'fid', '--images', d / 'first40.npz', '--ref', ref, '--no-progress').stdout == rf.stdout
    # a seeded subset is reproducible, and says so
    r2 = _main(capsys, 'fid', '--images', d / 'samples.npz', '--ref', ref, '--n', 100, '--seed', 3, '--no-progress')
    assert r2.returncode == 0 and 'N=100 (random subset of 300, seed 3)' in r2.stdout
    assert _main(capsys, 'fid', '--images', d / 'samples.npz', '--ref', ref, '--n', 100, '--seed', 3, '--no-progress').stdout == r2.stdout


@needs_fmnist
def test_bad_arguments_exit_2(setup, capsys):
    env, d, ref = setup
    np.savez(d / 'float.npz', images=_test_images(10).astype(np.float32))          # 0..255 floats: wrong range
    _one_line_error(dinof_cmd('fid', '--images', d / 'float.npz', '--ref', ref, env=env), 'must lie in [0, 1]')
    np.savez(d / 'shape.npz', images=np.zeros((4, 2, 28, 28), np.uint8))
    _one_line_error(_main(capsys, 'fid', '--images', d / 'shape.npz', '--ref', ref), 'C = 1 or 3')
    _one_line_error(_main(capsys, 'fid', '--images', d / 'nothing', '--ref', ref), 'nothing')
    _one_line_error(_main(capsys, 'fid', '--images', d / 'float.npz', '--ref', d / 'missing.npz'), 'missing.npz')
    np.savez(d / 'ok.npz', images=_test_images(10))
    _one_line_error(_main(capsys, 'fid', '--images', d / 'ok.npz', '--ref', ref, '--n', 11), '--n')
    _one_line_error(_main(capsys, 'fid', '--images', d / 'ok.npz', '--ref', ref, '--extractor', 'vgg'), 'vgg')
    _one_line_error(_main(capsys, 'fid', '--images', d / 'ok.npz', '--ref', ref, '--batch-size', 0), '--batch-size')
    from dinof.metrics import FIDStats
    st = FIDStats.load(ref); st.extractor_hash = 'bogus'; st.save(d / 'otherhash.npz')
    _one_line_error(_main(capsys, 'fid', '--images', d / 'ok.npz', '--ref', d / 'otherhash.npz'), 'fmnist:bogus')
    _one_line_error(_main(capsys, 'stats', '--dataset', 'nope', '--out', d / 'x.npz'), 'nope')
    _one_line_error(_main(capsys, 'stats', '--dataset', 'fashion_mnist', '--out', d / 'x.txt'), '.npz')
    _one_line_error(_main(capsys, 'fid', '--images', d / 'ok.npz'), '--ref')      # argparse: missing option


@needs_fmnist
def test_padded_32x32_images_score_as_the_28x28_ones(setup, capsys):
    "Issue 10 item 13: fmnist_small samples are 32x32 (28 padded by 2); the fmnist extractor centre-crops them back."
    env, d, ref = setup
    x = _test_images(200)
    np.savez(d / 'x28.npz', images=x)
    np.savez(d / 'x32.npz', images=np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))))
    r28 = _main(capsys, 'fid', '--images', d / 'x28.npz', '--ref', ref, '--no-progress')
    r32 = dinof_cmd('fid', '--images', d / 'x32.npz', '--ref', ref, '--no-progress', env=env)
    assert r28.returncode == 0 and r32.returncode == 0, (r28.stderr, r32.stderr)
    assert r32.stdout == r28.stdout and r32.stdout.startswith('FID ')


def _fmnist_ref(path, images):
    "fmnist reference statistics of `images` (uint8 [N, 1, 28, 28]), computed in memory."
    import torch
    from dinof.metrics import compute_stats, fmnist_extractor
    ext = fmnist_extractor(device='cpu')
    return compute_stats(torch.from_numpy(images), ext, progress=False).save(path), ext


def test_many_files_under_a_low_open_file_limit(tmp_path):
    "Issue 10 item 10: 1,200 PNGs scored under `ulimit -n 256` (they used to be opened all at once); same FID as in memory."
    import torch
    from PIL import Image
    from dinof.metrics import compute_stats
    rng = np.random.default_rng(0)
    x = (rng.random((1200, 1, 28, 28)) ** 3 * 255).astype(np.uint8)
    (tmp_path / 'png').mkdir()
    for k, im in enumerate(x): Image.fromarray(im[0]).save(tmp_path / 'png' / f'{k:04d}.png')
    ref, ext = _fmnist_ref(tmp_path / 'ref.npz', (rng.random((300, 1, 28, 28)) * 255).astype(np.uint8))
    env = dict(os.environ, DINOF_DEVICE='cpu', XDG_CACHE_HOME=str(tmp_path / 'cache'))
    r = dinof_cmd('fid', '--images', tmp_path / 'png', '--ref', ref, '--no-progress', env=env, max_open_files=256)
    assert r.returncode == 0, r.stderr
    from dinof.metrics import FIDStats
    want = FIDStats.load(ref).fid(compute_stats(torch.from_numpy(x), ext, progress=False))
    line = r.stdout.splitlines()[0]
    assert line.startswith(f'FID {want:.4f} ') and 'N=1200' in line, (line, want)


def test_two_folders_under_one_dataset_name(tmp_path, capsys, monkeypatch):
    "Issue 10 item 11: the statistics of two image folders differ (the cache used to key on the dataset name only)."
    from PIL import Image
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache')); monkeypatch.setenv('DINOF_DEVICE', 'cpu')
    rng = np.random.default_rng(1)
    for name, imgs in (('clothes', _blobs(rng)), ('noise', rng.integers(0, 256, (8, 28, 28), dtype=np.uint8))):
        (tmp_path / name).mkdir()
        for k, im in enumerate(imgs): Image.fromarray(im).save(tmp_path / name / f'{k}.png')
    common = ('stats', '--dataset', 'image_folder', '--image-size', 28, '--num-channels', 1, '--extractor', 'fmnist', '--no-progress')
    for name in ('clothes', 'noise'):
        r = _main(capsys, *common, '--data-root', tmp_path / name, '--out', tmp_path / f'{name}.npz')
        assert r.returncode == 0, r.stderr
    with np.load(tmp_path / 'clothes.npz') as a, np.load(tmp_path / 'noise.npz') as b:
        assert not np.array_equal(a['mu'], b['mu']) and not np.array_equal(a['sigma'], b['sigma'])


def _blobs(rng, n=8):
    "Smooth bright shapes on black, unlike noise."
    yy, xx = np.mgrid[:28, :28]
    return np.stack([(255 * np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / 40)).astype(np.uint8) for c in rng.integers(8, 20, (n, 2))])
