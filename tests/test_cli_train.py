"`dinof train / sample / eval` as a user runs them: the installed console script, and torchrun."
import json, os, subprocess, sys, sysconfig
from pathlib import Path
import numpy as np
import pytest
import torch
from dinof.config import get_config

SCRIPTS = Path(sysconfig.get_path('scripts'))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONDONTWRITEBYTECODE': '1'}
TOY = ['--preset', 'toy2d', '--no-progress', '--set', 'training.n_iters=20', '--set', 'training.batch_size=64',
       '--set', 'training.log_freq=10']

def dinof(*args, env=None, timeout=300):
    return subprocess.run([str(SCRIPTS / 'dinof'), *map(str, args)], capture_output=True, text=True, env=env or ENV, timeout=timeout)

def one_line_error(r, starts: str):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.startswith(f'dinof: error: {starts}'), r.stderr

def test_train_resume_sample_eval(tmp_path):
    wd = tmp_path / 'toy'
    r = dinof('train', *TOY, '--workdir', wd)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[-1] == f'step 20: {wd}/ckpt_00000020.pt'
    assert [json.loads(l)['step'] for l in (wd / 'log.jsonl').read_text().splitlines()] == [10, 20]
    one_line_error(dinof('train', *TOY, '--workdir', wd), f'workdir: {wd} already holds checkpoints')
    r = dinof('train', *TOY, '--workdir', wd, '--resume', '--steps', '5')
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == f'step 25: {wd}/ckpt_00000025.pt', r.stderr[-2000:]
    r = dinof('sample', '--checkpoint', wd, '--n', '500', '--steps', '20', '--prior', 'gaussian', '--out', tmp_path / 'g.png', '--no-progress')
    assert r.returncode == 0 and (tmp_path / 'g.png').stat().st_size > 1000, r.stderr[-2000:]
    assert r.stdout.startswith(f'wrote 500 samples to {tmp_path}/g.png: step 25, gaussian prior, pc, 20 network evaluations per sample')
    r = dinof('eval', '--checkpoint', wd / 'ckpt_00000025.pt', '--metric', 'bpd', '--n', '4', '--no-progress')
    assert r.returncode == 0 and r.stdout.startswith('bits/dim ') and 'N=4 test points' in r.stdout, r.stderr[-2000:]
    one_line_error(dinof('sample', '--checkpoint', wd, '--n', '0'), '--n: must be >= 1, got 0')
    (tmp_path / 'junk.pt').write_bytes(b'junk')
    one_line_error(dinof('eval', '--checkpoint', tmp_path / 'junk.pt'), f'checkpoint: {tmp_path}/junk.pt is not readable')

# each bad argument as a user meets it (more cases, in-process, in nbs/11_cli.ipynb)
@pytest.mark.parametrize('args, starts', [
    (['train', '--preset', 'nope'], "--preset: 'nope' is not a preset; presets: "),
    (['train', *TOY, '--set', 'training.batch_size=zero'], '--set: training.batch_size: must be an integer'),
    (['train', *TOY, '--workdir', '/proc/dinof-run'], 'workdir: /proc/dinof-run is not a writable folder'),
    (['train', '--preset', 'toy2d', '--config', 'x.json'], 'argument --config: not allowed with argument --preset'),
])
def test_bad_arguments_are_one_line_exit_2(args, starts):
    one_line_error(dinof(*args), starts)

@pytest.mark.slow   # ~20 s; the DDP arithmetic itself is tested in tests/test_train.py
def test_torchrun_two_processes(tmp_path):
    wd = tmp_path / 'ddp'
    r = subprocess.run([str(SCRIPTS / 'torchrun'), '--standalone', '--nproc_per_node=2', '-m', 'dinof.cli', 'train', *TOY,
                        '--workdir', str(wd)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('step 20: ') == 1, r.stdout     # rank 0 alone reports
    from dinof.train import load_checkpoint
    assert load_checkpoint(wd / 'ckpt_00000020.pt')['step'] == 20

def _gray_folder(root: Path, n=40):
    from PIL import Image
    root.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        x = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 36, 36, generator=g), 5, stride=1)[0, 0]
        Image.fromarray(((x - x.min()) / (x.max() - x.min()) * 255).round().byte().numpy(), mode='L').save(root / f'{i:03d}.png')

def test_image_model_fid_kid_is(tmp_path, monkeypatch, capsys):
    from dinof.cli import main
    _gray_folder(tmp_path / 'imgs')
    env = {**ENV, 'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    monkeypatch.setenv('XDG_CACHE_HOME', env['XDG_CACHE_HOME'])
    wd = tmp_path / 'run'
    r = dinof('train', '--preset', 'fmnist_small', '--no-progress', '--workdir', wd, '--set', 'data.dataset=image_folder',
              '--set', f'data.root={tmp_path / "imgs"}', '--set', 'training.batch_size=8', '--set', 'training.n_iters=2', env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    common = ['--checkpoint', wd, '--n', '16', '--method', 'euler', '--steps', '2', '--extractor', 'fmnist', '--no-progress']
    r = dinof('eval', *common, '--metric', 'fid', env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = {'fid': r.stdout}
    torch.set_num_threads(1)
    for metric in ('kid', 'is'):                           # in this process: the same code, without a second start-up
        assert main(['eval', *map(str, common), '--metric', metric]) == 0
        out[metric] = capsys.readouterr().out
    assert out['fid'].startswith('FID ') and 'ref N=40' in out['fid'] and float(out['fid'].split()[1]) > 0
    assert out['kid'].startswith('KID ') and 'ref N=40' in out['kid']
    assert out['is'].startswith('IS ') and float(out['is'].split()[1]) >= 1
    assert main(['sample', '--checkpoint', str(wd), '--n', '6', '--method', 'euler', '--steps', '2', '--out', str(tmp_path / 's.npz'), '--no-progress']) == 0
    S = get_config('fmnist_small').data.image_size
    with np.load(tmp_path / 's.npz') as z: assert z['samples'].shape == (6, 1, S, S) and z['samples'].dtype == np.uint8
    assert main(['eval', *map(str, common), '--metric', 'kid', '--stats', str(tmp_path / 'x.npz')]) == 2
    assert capsys.readouterr().err == 'dinof: error: --stats: only --metric fid uses reference statistics, not kid\n'

# `dinof quickstart`: every bad argument is one line and status 2, checked before anything is written (in-process, and
# one case through the console script); the job itself runs in nbs/11_cli.ipynb and tests/test_bench.py
QUICKSTART_BAD = [
    (['--n', '0'], '--n: must be >= 2, got 0'),
    (['--n', '1'], '--n: must be >= 2, got 1'),
    (['--steps', '0'], '--steps: must be >= 1, got 0'),
    (['--minutes', '-5'], '--minutes: must be a number > 0, got -5'),
    (['--minutes', 'nan'], '--minutes: must be a number > 0, got nan'),
    (['--seed', '-1'], '--seed: must be >= 0, got -1'),
    (['--set', 'training.batch_size=zero'], '--set: training.batch_size: must be an integer'),
    (['--set', 'optim.lr=1e38'], '--set: optim.lr: '),
    (['--set', 'batch_size=3'], "--set: override: 'batch_size' must be section.key"),
    (['--workdir', '{d}/afile'], '--workdir: {d}/afile exists and is not a folder'),
    (['--workdir', '{d}/afile/sub'], '--workdir: {d}/afile/sub is not a writable folder'),
    (['--device', 'bogus'], "device: 'bogus' is not a device name"),
    (['--n', 'many'], "argument --n: invalid int value: 'many'"),
]

@pytest.mark.parametrize('args, starts', QUICKSTART_BAD, ids=[' '.join(a) for a, _ in QUICKSTART_BAD])
def test_quickstart_bad_arguments_are_one_line_exit_2(tmp_path, capsys, args, starts):
    from dinof.cli import main
    (tmp_path / 'afile').write_text('x')
    argv = ['quickstart', '--workdir', str(tmp_path / 'qs'), '--no-progress', *[a.format(d=tmp_path) for a in args]]
    try: rc = main(argv)
    except SystemExit as e: rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count('\n') == 1 and 'Traceback' not in err, (rc, err)
    assert err.startswith(f'dinof: error: {starts.format(d=tmp_path)}'), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['afile']          # nothing written

def test_quickstart_bad_argument_in_a_real_process(tmp_path):
    one_line_error(dinof('quickstart', '--workdir', tmp_path / 'qs', '--steps', '0'), '--steps: must be >= 1, got 0')
    assert not (tmp_path / 'qs').exists()

# `--set`: several `section.key=value` after one `--set`, `--set` repeated, or both (issue 21 item 11)
def test_set_takes_several_values_and_repeats(tmp_path, capsys):
    from dinof.cli import build_parser, main
    from dinof.train import find_checkpoint, load_checkpoint
    p = build_parser()
    test = p.parse_args(['train', '--preset', 'toy2d', '--set', 'a.b=1', 'c.d=[1,2]', '--set', 'e.f=2', '--steps', '3'])
    assert (test.set, test.steps) == (['a.b=1', 'c.d=[1,2]', 'e.f=2'], 3)
    a = p.parse_args(['bench', '--set', 'model.nf=8', 'flow.depth=1', 'quality'])     # the positional after the list stays one
    assert (a.what, a.set) == ('quality', ['model.nf=8', 'flow.depth=1'])
    a = p.parse_args(['quickstart', '--set', 'model.nf=8', 'flow.depth=1', '--n', '5'])
    assert (a.set, a.n) == (['model.nf=8', 'flow.depth=1'], 5)
    # the settings reach the run: two after one --set, one more after another
    wd = tmp_path / 'run'
    assert main(['train', '--preset', 'toy2d', '--no-progress', '--workdir', str(wd), '--set', 'training.n_iters=3', 'training.batch_size=8',
                 '--set', 'training.log_freq=1']) == 0
    ck = load_checkpoint(find_checkpoint(wd))
    cfg = json.loads(ck['config'])
    assert (ck['step'], cfg['training']['batch_size'], cfg['training']['log_freq']) == (3, 8, 1)

@pytest.mark.parametrize('args, starts', [
    (['train', *TOY, '--set', 'training.log_freq=5', 'training.batch_size=zero'], '--set: training.batch_size: must be an integer'),
    (['train', *TOY, '--set', 'training.log_freq=5', 'stray'], 'unrecognized arguments: stray'),
    (['bench', '--set', 'model.nf=8', 'model.nf=x', 'quality'], '--set: model.nf: '),
    (['bench', '--set', 'model.nf=8', 'fast'], "argument what: invalid choice: 'fast'"),
])
def test_several_values_after_one_set_bad_input(args, starts):
    "A bad value among several after one `--set` is one line naming it, status 2, no traceback (the console script)."
    one_line_error(dinof(*args), starts)

# the trained models the repository ships (files of dinof.bench.export_models) sample and score (issue 21 item 12)
SHIPPED = Path(__file__).resolve().parents[1] / 'bench' / 'fashion_mnist' / 'models'

def test_sample_the_shipped_models(tmp_path):
    from dinof.bench import load_exported
    fast = ['--n', '3', '--method', 'euler', '--steps', '2', '--no-progress', '--device', 'cpu']
    r = dinof('sample', '--checkpoint', SHIPPED / 'dinof.pt', *fast, '--out', tmp_path / 's.npz')
    assert r.returncode == 0, r.stderr[-2000:]
    m = load_exported(SHIPPED / 'dinof.pt', device='cpu')
    assert r.stdout.startswith(f'wrote 3 samples to {tmp_path}/s.npz: step {m.step}, flow prior, euler, ')
    from dinof.core import to_uint8
    with np.load(tmp_path / 's.npz') as z: s = z['samples']
    want = to_uint8(m.sample(3, 'flow', seed=0, method='euler', steps=2).samples, m.config.resolved().data.centered).numpy()
    assert s.shape == want.shape and np.abs(s.astype(int) - want).max() <= 1       # the exported EMA weights, up to rounding
    # the baseline (Gaussian prior at T, its config's) and a flow-only file (its score network from dinof.pt beside it), in-process
    from dinof.cli import main
    for f in ('baseline.pt', 'flow_tm0.4.pt'):
        assert main(['sample', '--checkpoint', str(SHIPPED / f), *fast, '--out', str(tmp_path / f'{f}.png')]) == 0
        assert (tmp_path / f'{f}.png').stat().st_size > 500

def test_eval_the_shipped_model(capsys):
    "`eval` reads the exported file too (IS: no reference data needed, so it runs anywhere)."
    from dinof.cli import main
    assert main(['eval', '--checkpoint', str(SHIPPED / 'dinof.pt'), '--metric', 'is', '--n', '4', '--method', 'euler', '--steps', '2',
                 '--no-progress', '--device', 'cpu']) == 0
    out = capsys.readouterr().out
    assert out.startswith('IS ') and 'N=4, flow prior' in out and 'extractor fmnist' in out, out

def test_no_ema_on_an_exported_file_is_one_line(tmp_path):
    one_line_error(dinof('sample', '--checkpoint', SHIPPED / 'dinof.pt', '--no-ema', '--out', tmp_path / 's.png'),
                   f'--no-ema: {SHIPPED}/dinof.pt is an exported models file, which holds only the EMA weights')
    assert not (tmp_path / 's.png').exists()

def test_sample_the_moment_prior(tmp_path):
    "`--prior moments` (issue 22): the training set's Gaussian at t_m under the shipped score network, no flow; equal to Models.sample."
    from dinof.bench import load_exported
    from dinof.cli import main
    from dinof.core import to_uint8
    fast = ['--n', '3', '--method', 'euler', '--steps', '2', '--no-progress', '--device', 'cpu']
    assert main(['sample', '--checkpoint', str(SHIPPED / 'dinof.pt'), '--prior', 'moments', *fast, '--out', str(tmp_path / 'm.npz')]) == 0
    m = load_exported(SHIPPED / 'dinof.pt', device='cpu')
    with np.load(tmp_path / 'm.npz') as z: s = z['samples']
    want = to_uint8(m.sample(3, 'moments', seed=0, method='euler', steps=2).samples, m.config.resolved().data.centered).numpy()
    assert s.shape == want.shape and np.abs(s.astype(int) - want).max() <= 1
    flow = to_uint8(m.sample(3, 'flow', seed=0, method='euler', steps=2).samples, True).numpy()
    assert np.abs(s.astype(int) - flow).mean() > 10     # another prior: other images

def test_bench_prior_bad_input_is_one_line(tmp_path):
    one_line_error(dinof('bench', 'prior', '--root', tmp_path, '--score', 'nope'), '--score:')
    one_line_error(dinof('bench', 'prior', '--root', SHIPPED.parent, '--rungs', 'gaussian', '--settings', 'dpm2'), 'rungs:')
    # a control is trained first, but bad rungs or settings are refused before an hour of training starts
    one_line_error(dinof('bench', 'prior', '--root', tmp_path, '--score', 'score_only', '--rungs', 'gaussian'), 'rungs:')
    one_line_error(dinof('bench', 'prior', '--root', tmp_path, '--score', 'dinof-seed1', '--settings', 'fast'), 'settings:')
    one_line_error(dinof('bench', 'prior', '--root', SHIPPED.parent, '--flow-seeds', '1,x', '--t-m', '0.2'), '--flow-seeds:')
    one_line_error(dinof('bench', 'prior', '--root', SHIPPED.parent, '--flow-seeds', '1'), '--flow-seeds: needs --t-m')
    one_line_error(dinof('bench', 'prior', '--root', SHIPPED.parent, '--flow-seeds', '-1', '--t-m', '0.2'), 'seeds:')
    one_line_error(dinof('bench', 'prior', '--root', SHIPPED.parent, '--flow-seeds', '1', '--t-m', '0.2', '--settings', 'fast'), 'setting:')
    assert not any((tmp_path / d).exists() for d in ('runs', 'models', 'ladder/runs', 'ladder/models'))

def test_bench_prior_todo_lists_what_is_left(tmp_path, capsys):
    "`dinof bench prior --todo` prints `ladder_todo`'s commands for the stored cells and draws nothing."
    from dinof.cli import main
    import json, torch
    from dinof.ladder import PLAN, ladder_in_progress, ladder_todo, load_ladder
    assert main(['bench', 'prior', '--root', str(tmp_path), '--todo']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ladder_todo([]) and len(out) > len(PLAN) and out[0].startswith('dinof bench prior --score dinof --rungs standard,') and out[0].endswith('--settings dpm2')
    assert not (tmp_path / 'ladder').exists()
    d = tmp_path / 'ladder' / 'partial' / 'dinof-exact-paper-n1000-seed0'; d.mkdir(parents=True)   # a cell a killed run left half drawn
    torch.save({'key': json.dumps({'n': 1000}), 'samples': torch.zeros(500, 1, 28, 28, dtype=torch.uint8), 'nfe': 1, 'seconds': 60.}, d / 'batch0.pt')
    assert main(['bench', 'prior', '--root', str(tmp_path), '--todo']) == 0
    assert capsys.readouterr().out.splitlines()[-1] == 'in progress: dinof-exact-paper-n1000-seed0: 500 of 1000 samples drawn, 1 min kept'
    root = SHIPPED.parent
    assert main(['bench', 'prior', '--root', str(root), '--todo']) == 0
    assert capsys.readouterr().out.splitlines() == ((ladder_todo(load_ladder(root)) or ['every cell of dinof.ladder.PLAN is drawn'])
                                                    + [f'in progress: {s}' for s in ladder_in_progress(root)])
