"""`dinof stats` / `dinof fid` on Fashion-MNIST's test split with the fast classifier extractor: the main paths as a user
runs them (subprocess), the argument checks in-process through `dinof.cli.main` (the same code, without the start-up cost)."""
import gzip, os, subprocess, sysconfig
from pathlib import Path
import numpy as np
import pytest
from dinof.cli import main

FMNIST = Path('/usr/share/datasets/fashion-mnist')
pytestmark = pytest.mark.skipif(not (FMNIST / 't10k-images-idx3-ubyte.gz').is_file(), reason='Debian Fashion-MNIST not installed')


def dinof_cmd(*args, env=None):
    exe = os.path.join(sysconfig.get_path('scripts'), 'dinof')
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


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


def test_stats_writes_caches_and_never_overwrites(setup, capsys, monkeypatch):
    env, d, ref = setup
    with np.load(ref) as z:
        assert z['mu'].shape == (128,) and z['sigma'].shape == (128, 128) and int(z['n']) == 10000
        assert str(z['extractor']) == 'fmnist'
    cached = list((d / 'cache' / 'dinof' / 'stats').glob('fashion_mnist-test-fmnist-*.npz'))
    assert len(cached) == 1
    _one_line_error(dinof_cmd('stats', '--dataset', 'fashion_mnist', '--split', 'test', '--extractor', 'fmnist', '--out', ref,
                              env=env), 'exists', '--force')
    mtime = cached[0].stat().st_mtime_ns
    monkeypatch.setenv('XDG_CACHE_HOME', env['XDG_CACHE_HOME'])
    r = _main(capsys, 'stats', '--dataset', 'fashion_mnist', '--split', 'test', '--extractor', 'fmnist', '--out', ref,
              '--force', '--no-progress')
    assert r.returncode == 0 and 'N=10000' in r.stdout, r.stderr
    assert cached[0].stat().st_mtime_ns == mtime       # served from the cache, not recomputed


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
