"""The installed console script, run as a user runs it: every bad input of `dinof stats` / `dinof fid` is one line on
stderr (`dinof: error: ...`), exit status 2, no traceback, and nothing written. The cases of issue 10 item 12 run the
console script in a subprocess; the rest of the audit calls `dinof.cli.main` in-process (the same code, without the
two seconds of start-up per case)."""
import os, subprocess, sysconfig
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
import dinof
from dinof.cli import main


def dinof_cmd(*args, env=None):
    exe = os.path.join(sysconfig.get_path('scripts'), 'dinof')
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith('dinof: error:') and r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr, r.stderr
    for w in words: assert w in r.stderr, (w, r.stderr)


def test_version():
    r = dinof_cmd('--version')
    assert r.returncode == 0 and r.stdout.strip() == f'dinof {dinof.__version__}'

def test_help():
    r = dinof_cmd('--help')
    assert r.returncode == 0 and 'usage: dinof' in r.stdout

def test_no_command_prints_usage_on_stderr_and_exits_2():
    r = dinof_cmd()
    assert r.returncode == 2 and 'usage: dinof' in r.stderr and r.stdout == ''

def test_unknown_command_is_one_line_exit_2():
    _one_line_error(dinof_cmd('no-such-command'))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "Bad inputs of every kind, and two reference files (fmnist's and inception's identities) that need no dataset."
    import torch
    from dinof.metrics import FIDStats, fmnist_extractor, fid_helper_inception
    d = tmp_path_factory.mktemp('bad')
    (d / 'dir.npz').mkdir(); (d / 'afile').write_text('x'); (d / 'notes.txt').write_text('x'); (d / 'empty').mkdir()
    (d / 'corrupt').mkdir(); (d / 'corrupt' / 'a.png').write_bytes(b'not a png')
    (d / 'mixed').mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(d / 'mixed' / 'a.png')
    Image.fromarray(np.zeros((30, 28), np.uint8)).save(d / 'mixed' / 'b.png')
    (d / 'faces').mkdir(); (d / 'good').mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(d / 'faces' / 'a.png'); (d / 'faces' / 'b.png').write_bytes(b'junk')
    for k in range(3): Image.fromarray(np.full((40, 40, 3), 50 * k, np.uint8)).save(d / 'good' / f'{k}.png')
    imgs = np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)
    np.savez(d / 'ok.npz', images=imgs)
    np.savez(d / 'one.npz', images=imgs[:1])
    np.savez(d / 'shape.npz', images=np.zeros((3, 5, 8, 8), np.uint8))
    np.savez(d / 'int.npz', images=imgs.astype(np.int64))
    np.savez(d / 'range.npz', images=imgs.astype(np.float32))              # 0..255 floats
    np.savez(d / 'small.npz', images=imgs[..., :16, :16])
    (d / 'junk.npz').write_bytes(b'junk')
    (d / 'cut.npz').write_bytes((d / 'ok.npz').read_bytes()[:300])
    fm = fmnist_extractor(device='cpu')
    FIDStats(np.zeros(128), np.eye(128), 10, fm.name, fm.hash, fm.preprocess).save(d / 'ref.npz')
    inc = fid_helper_inception(device='cpu')
    FIDStats(np.zeros(2048), np.eye(2048), 10, inc.name, inc.hash, 'tf').save(d / 'ref_tf.npz')
    (d / 'ref_cut.npz').write_bytes((d / 'ref.npz').read_bytes()[:200])
    env = dict(os.environ, XDG_CACHE_HOME=str(d / 'cache'), DINOF_DEVICE='cpu')
    return d, env


ITEM12 = [  # (command line, words the one line must hold); {d} is the folder of bad inputs. Run as a subprocess.
    ('stats --dataset fashion_mnist --out /sys/dinof-test.npz', ['--out: cannot write in /sys']),   # unwritable, even for root
    ('stats --dataset fashion_mnist --out {d}/afile/x.npz', ['afile is a file, not a folder']),
    ('stats --dataset fashion_mnist --out {d}/dir.npz --force', ['is a folder']),
    ('stats --dataset 8gaussians --out {d}/x.npz', ['toy 2-D density', 'image dataset']),
    ('stats --dataset image_folder --data-root {d}/faces --out {d}/x.npz', ['image_size', '--image-size']),
    ('fid --images {d}/corrupt --ref {d}/ref.npz', ['a.png: not a readable image']),
    ('fid --images {d}/cut.npz --ref {d}/ref.npz', ['cut.npz: not a readable .npz file']),
    ('fid --images {d}/shape.npz --ref {d}/ref.npz', ['C = 1 or 3']),
]

@pytest.mark.parametrize('args,words', ITEM12)
def test_bad_input_subprocess(files, args, words):
    d, env = files
    before = sorted(p.name for p in d.iterdir())
    _one_line_error(dinof_cmd(*args.format(d=d).split(), '--no-progress', env=env), *words)
    assert sorted(p.name for p in d.iterdir()) == before                   # nothing written, nothing left behind


def _main(capsys, monkeypatch, env, args):
    "dinof.cli.main in-process -> CompletedProcess; argparse's own errors exit through SystemExit."
    for k in ('XDG_CACHE_HOME', 'DINOF_DEVICE'): monkeypatch.setenv(k, env[k])
    capsys.readouterr()
    try: rc = main(args)
    except SystemExit as e: rc = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


STATS = [  # (arguments after `dinof stats`, words)
    ('--dataset fashion_mnist --out {d}/x.txt', ['.npz']),
    ('--dataset toy2d --out {d}/x.npz', ['toy 2-D density']),
    ('--dataset image_folder --out {d}/x.npz --image-size 8', ['--data-root']),
    ('--dataset image_folder --data-root {d}/faces --image-size 28 --num-channels 2 --out {d}/x.npz', ['num_channels']),
    ('--dataset fashion_mnist --num-channels 3 --out {d}/x.npz', ['num_channels']),
    ('--dataset image_folder --data-root {d}/faces --image-size 28 --num-channels 1 --extractor fmnist --out {d}/x.npz',
     ['b.png: not a readable image']),
    ('--dataset image_folder --data-root {d}/good --image-size 16 --extractor fmnist --out {d}/x.npz', ['28x28']),
    ('--dataset fashion_mnist --extractor inception --preprocess pil --out {d}/x.npz', ['--preprocess', 'pil']),
]

@pytest.mark.parametrize('args,words', STATS)
def test_stats_bad_input(files, args, words, capsys, monkeypatch):
    d, env = files
    before = sorted(p.name for p in d.iterdir())
    _one_line_error(_main(capsys, monkeypatch, env, ['stats', *args.format(d=d).split(), '--no-progress']), *words)
    assert sorted(p.name for p in d.iterdir()) == before


def test_out_checked_before_the_data_is_loaded(files):
    "An unwritable --out is refused at once, even for a dataset that would take long to load (or is missing)."
    d, env = files
    _one_line_error(dinof_cmd('stats', '--dataset', 'cifar10', '--data-root', d / 'nowhere', '--out', '/sys/x.npz', env=env), '/sys')


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_stats_read_only_folder(files):
    d, env = files
    ro = d / 'ro'; ro.mkdir(exist_ok=True); ro.chmod(0o555)
    try: _one_line_error(dinof_cmd('stats', '--dataset', 'fashion_mnist', '--out', ro / 'x.npz', env=env), 'cannot write in')
    finally: ro.chmod(0o755)


FID = [  # (arguments after `dinof fid`, words)
    ('--images {d}/nothing --ref {d}/ref.npz', ['nothing', 'no such folder']),
    ('--images {d}/empty --ref {d}/ref.npz', ['holds no image files']),
    ('--images {d}/mixed --ref {d}/ref.npz', ['differ in size']),
    ('--images {d}/notes.txt --ref {d}/ref.npz', ['not a folder of images']),
    ('--images {d}/junk.npz --ref {d}/ref.npz', ['junk.npz: not a readable .npz file']),
    ('--images {d}/int.npz --ref {d}/ref.npz', ['uint8 or floating point']),
    ('--images {d}/range.npz --ref {d}/ref.npz', ['must lie in [0, 1]']),
    ('--images {d}/one.npz --ref {d}/ref.npz', ['at least 2']),
    ('--images {d}/small.npz --ref {d}/ref.npz', ['28x28']),
    ('--images {d}/ok.npz --ref {d}/missing.npz', ['missing.npz']),
    ('--images {d}/ok.npz --ref {d}/ref_cut.npz', ['ref_cut.npz: not a readable .npz statistics file']),
    ('--images {d}/ok.npz --ref {d}/ok.npz', ['mu and sigma']),
    ('--images {d}/ok.npz --ref {d}/ref.npz --n 7', ['--n']),
    ('--images {d}/ok.npz --ref {d}/ref.npz --n 2 --seed -1', ['--seed']),
    ('--images {d}/ok.npz --ref {d}/ref.npz --batch-size 0', ['--batch-size']),
    ('--images {d}/ok.npz --ref {d}/ref.npz --extractor vgg', ['vgg']),
    ('--images {d}/ok.npz --ref {d}/ref.npz --weights {d}/junk.npz', ['not a Fashion-MNIST classifier weights file']),
    ('--images {d}/ok.npz --ref {d}/ref.npz --device bogus', ['bogus']),
    ('--images {d}/ok.npz --ref {d}/ref.npz --extractor inception', ['fmnist:', 'different networks']),
    ('--images {d}/ok.npz --ref {d}/ref_tf.npz --preprocess torch', ["'tf' preprocessing, not 'torch'"]),
]

@pytest.mark.parametrize('args,words', FID)
def test_fid_bad_input(files, args, words, capsys, monkeypatch):
    d, env = files
    _one_line_error(_main(capsys, monkeypatch, env, ['fid', *args.format(d=d).split(), '--no-progress']), *words)
