"""4. Bad configs and arguments. Every field of every config section (found by iterating `dataclasses.fields`, so a new
field is covered the day it is added) gets invalid values derived from its type, choices and range, given four ways:
`dinof train --set` and `dinof train --config FILE` (in this process, through `dinof.cli.main`), `Config.override`, and
a `Config` edited by hand and handed to `Trainer`. Each must be one line naming the field: on the command line exit
status 2 and no traceback, in Python a `ValueError`; nothing is created. Then every command with bad arguments, and a
few of them through the real console script."""
import dataclasses, json, math, typing
from pathlib import Path
import pytest
from dinof.config import SECTIONS, Config, get_config
from harness import ENV, clean_error, count, dinof, one_line, run_main, sets

def _invalid(sec: str, f: dataclasses.Field, hint) -> list:
    "Invalid Python values for one field, from its type, choices and range."
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    m, out = f.metadata, []
    if not optional: out.append(None)
    if base is bool: out += ['maybe', 2]
    elif base is int: out += [1.5, 'many']
    elif base is float: out += [math.nan, math.inf, 'fast']
    elif base is str: out += ['bogus-choice'] if m.get('choices') else [5]
    elif base is tuple: out += [[0], ['x']] if f.name != 'metrics' else [['bogus'], []]
    if m.get('choices') and base is int: out.append(max(m['choices']) + 1)
    if m.get('lo') is not None: out.append(m['lo'] if m.get('lo_open') else m['lo'] - 1)
    if m.get('hi') is not None: out.append(m['hi'] + 1)
    return out

def _cli_text(v) -> str:
    "How a user writes `v` after `--set section.key=`."
    if v is None: return 'null'
    if isinstance(v, float) and not math.isfinite(v): return 'NaN' if math.isnan(v) else 'Infinity'
    return v if isinstance(v, str) else json.dumps(v)

FIELDS = [(sec, f.name, v) for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)
          for v in _invalid(sec, f, typing.get_type_hints(cls)[f.name])]
BASE = 'toy2d'

def test_the_table_covers_every_field():
    every = {(sec, f.name) for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert {(s, k) for s, k, _ in FIELDS} == every and len(every) > 90

@pytest.mark.parametrize('sec, key, value', FIELDS, ids=[f'{s}.{k}={_cli_text(v)}' for s, k, v in FIELDS])
def test_an_invalid_field_is_one_line_naming_it(sec, key, value, tmp_path, capsys):
    name, text = f'{sec}.{key}', _cli_text(value)
    wd = tmp_path / 'run'
    results = {}
    # 1. dinof train --set
    rc, out, err = run_main(['train', '--preset', BASE, '--workdir', wd, '--no-progress', '--steps', '1', '--set', f'{name}={text}'], capsys)
    results['--set'] = (clean_error(rc, err, f'dinof: error: --set: {name}: '), err)
    # 2. dinof train --config FILE (the preset's JSON with the bad value)
    d = get_config(BASE).to_dict(); d[sec][key] = value
    (tmp_path / 'c.json').write_text(json.dumps(d))
    rc, out, err = run_main(['train', '--config', tmp_path / 'c.json', '--workdir', wd, '--no-progress', '--steps', '1'], capsys)
    results['--config'] = (clean_error(rc, err, f'dinof: error: {name}: '), err)
    # 3. Config.override
    try: get_config(BASE).override(f'{name}={text}'); results['override'] = (False, 'accepted')
    except ValueError as e: results['override'] = (one_line(str(e)) and str(e).startswith(f'{name}: '), str(e))
    # 4. a Config edited by hand, handed to the Trainer
    from dinof.train import Trainer
    cfg = get_config(BASE); setattr(getattr(cfg, sec), key, tuple(value) if isinstance(value, list) else value)
    try: Trainer(cfg, wd, progress=False); results['Trainer'] = (False, 'accepted')
    except ValueError as e: results['Trainer'] = (one_line(str(e)) and str(e).startswith(f'{name}: '), str(e))
    except Exception as e: results['Trainer'] = (False, f'{type(e).__name__}: {e}')
    for how, (ok, msg) in results.items(): count('bad inputs', ok, f'{how} {name}={text}: {msg.strip()[-150:]!r}')
    assert not wd.exists(), 'a rejected config created the workdir'
    assert all(ok for ok, _ in results.values()), results

LINKS = [  # settings valid alone, invalid together (the validation table's cross-field rules)
    ('sde.sigma_min=60', 'sde.sigma_max'), ('sde.beta_min=30', 'sde.beta_max'), ('training.w_score=0', None),
    ('training.micro_batch_size=5', 'training.micro_batch_size'), ('model.name=ncsnpp', 'model.name'),
    ('flow.name=glow', 'flow.name'), ('flow.dim=3', 'flow.dim'), ('flow.checkpoint=true', 'flow.checkpoint'),
    ('sde.type=subvpsde', None), ('sde.t_m=0.0005', 'sde.t_m'), ('model.ch_mult=[]', 'model.ch_mult'),
    ('model.scale_by_sigma=true', 'model.scale_by_sigma'),
]

@pytest.mark.parametrize('assignment, names', LINKS, ids=[a for a, _ in LINKS])
def test_inconsistent_settings_are_one_line(assignment, names, tmp_path, capsys):
    extra = ['training.w_flow=0'] if assignment == 'training.w_score=0' else []
    extra += ['training.continuous=false'] if assignment == 'sde.type=subvpsde' else []
    rc, out, err = run_main(['train', '--preset', BASE, '--workdir', tmp_path / 'run', '--no-progress', '--steps', '1', *sets(assignment, *extra)], capsys)
    ok = clean_error(rc, err, f'dinof: error: --set: {names or ""}') and not (tmp_path / 'run').exists()
    count('bad inputs', ok, f'--set {assignment}: {rc} {err!r}')
    assert ok, (rc, err)

@pytest.fixture(scope='module')
def places(tmp_path_factory, toy_run):
    "Files and folders the bad command lines point at."
    d = tmp_path_factory.mktemp('args')
    (d / 'empty').mkdir(); (d / 'afile').write_text('x'); (d / 'notes.txt').write_text('some notes')
    (d / 'garbage.json').write_text('{"data": '); (d / 'list.json').write_text('[1, 2]')
    (d / 'section.json').write_text('{"bogus": {}}'); (d / 'key.json').write_text('{"training": {"bogus": 1}}')
    (d / 'three').mkdir()
    from PIL import Image
    import numpy as np
    for i in range(3): Image.fromarray(np.zeros((32, 32), np.uint8)).save(d / 'three' / f'{i}.png')
    return d, toy_run[0]

COMMANDS = [  # (arguments; {d}: a folder of bad files, {run}: a finished toy run), what the line starts with after 'dinof: error: '
    ('--bogus', 'unrecognized arguments'),
    ('train', 'one of the arguments --preset --config is required'),
    ('train --preset nope', "--preset: 'nope' is not a preset; presets: "),
    ('train --preset toy2d --steps -3', '--steps: must be >= 0, got -3'),
    ('train --preset toy2d --steps many', "argument --steps: invalid int value: 'many'"),
    ('train --config {d}/missing.json', '--config: no such file'),
    ('train --config {d}/garbage.json', 'config: not valid JSON'),
    ('train --config {d}/list.json', 'config: must be a JSON object'),
    ('train --config {d}/section.json', 'bogus: is not a config section'),
    ('train --config {d}/key.json', 'training.bogus: is not a setting of training'),
    ('train --preset toy2d --set training.batch_size', "--set: override: 'training.batch_size' is not of the form"),
    ('train --preset toy2d --set batch_size=3', "--set: override: 'batch_size' must be section.key"),
    ('train --preset toy2d --set bogus.x=1', "--set: bogus.x: 'bogus' is not a config section"),
    ('train --preset toy2d --set training.bogus=1', '--set: training.bogus: is not a setting of training'),
    ('train --preset toy2d --workdir {d}/afile', 'workdir: {d}/afile is not a writable folder'),
    ('train --preset toy2d --workdir {d}/afile/sub', 'workdir: {d}/afile/sub is not a writable folder'),
    ('train --preset toy2d --workdir {d}/w --device bogus', 'device'),
    ('train --preset toy2d --workdir {d}/w --set training.score_checkpoint={d}/missing.pth', 'training.score_checkpoint: no such file'),
    ('train --preset toy2d --workdir {d}/w --set training.score_checkpoint={d}/notes.txt', 'training.score_checkpoint: {d}/notes.txt is not readable'),
    ('train --preset fmnist_small --workdir {d}/w --set data.dataset=image_folder', 'root: image_folder needs root='),
    ('train --preset fmnist_small --workdir {d}/w --set data.dataset=image_folder --set data.root={d}/empty', 'image_folder: '),
    ('train --preset fmnist_small --workdir {d}/w --set data.dataset=image_folder --set data.root={d}/three', 'batch_size: '),
    ('sample', 'the following arguments are required: --checkpoint'),
    ('sample --checkpoint {d}/missing.pt', '--checkpoint: no such file or folder'),
    ('sample --checkpoint {d}/empty', '--checkpoint: {d}/empty holds no checkpoint'),
    ('sample --checkpoint {d}/notes.txt', 'checkpoint: {d}/notes.txt is not readable'),
    ('sample --checkpoint {run} --n 0', '--n: must be >= 1, got 0'),
    ('sample --checkpoint {run} --n -5', '--n: must be >= 1, got -5'),
    ('sample --checkpoint {run} --n ten', "argument --n: invalid int value: 'ten'"),
    ('sample --checkpoint {run} --steps 0', '--steps: must be >= 1, got 0'),
    ('sample --checkpoint {run} --batch-size 0', '--batch-size: must be >= 1, got 0'),
    ('sample --checkpoint {run} --seed -1', '--seed: must be >= 0, got -1'),
    ('sample --checkpoint {run} --method bogus', "--method: 'bogus' is not a method"),
    ('sample --checkpoint {run} --prior bogus', "argument --prior: invalid choice: 'bogus'"),
    ('sample --checkpoint {run} --out {d}/s.jpg', '--out: {d}/s.jpg must end in .png'),
    ('sample --checkpoint {run} --out {d}/empty', '--out: {d}/empty'),
    ('sample --checkpoint {run} --out {d}/nowhere/s.png', '--out: the folder {d}/nowhere does not exist'),
    ('sample --checkpoint {run} --device bogus', 'device'),
    ('eval --checkpoint {run} --metric bogus', "argument --metric: invalid choice: 'bogus'"),
    ('eval --checkpoint {run} --metric kid --stats {d}/s.npz', '--stats: only --metric fid uses reference statistics, not kid'),
    ('eval --checkpoint {run} --metric fid', '--metric: fid needs image data'),
    ('eval --checkpoint {run} --metric bpd --n 0', '--n: must be >= 1, got 0'),
    ('eval --checkpoint {run} --metric bpd --method bogus', "--method: 'bogus' is not a method"),
    ('eval --checkpoint {d}/missing.pt', '--checkpoint: no such file or folder'),
    ('stats --dataset nope --out {d}/o.npz', "name: 'nope' is not a dataset"),
    ('fid --images {d}/empty', 'the following arguments are required: --ref'),
    ('quickstart --workdir {d}/qs --n 0', '--n: must be >= 2, got 0'),
    ('quickstart --workdir {d}/qs --steps 0', '--steps: must be >= 1, got 0'),
    ('quickstart --workdir {d}/qs --minutes -1', '--minutes: must be a number > 0, got -1'),
    ('quickstart --workdir {d}/qs --set bogus.x=1', "--set: bogus.x: 'bogus' is not a config section"),
    ('quickstart --workdir {d}/afile', '--workdir: {d}/afile exists and is not a folder'),
    ('quickstart --workdir {d}/afile/sub', '--workdir: {d}/afile/sub is not a writable folder'),
]

@pytest.mark.parametrize('args, starts', COMMANDS, ids=[a for a, _ in COMMANDS])
def test_a_bad_command_line_is_one_line_exit_2(places, args, starts, capsys, monkeypatch, tmp_path):
    d, run = places
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.setenv('DINOF_DATA', str(d / 'empty'))
    argv = args.format(d=d, run=run).split() + (['--no-progress'] if args.split()[0] in ('train', 'sample', 'eval', 'quickstart') else [])
    if argv[0] == 'train' and '--steps' not in argv: argv += ['--steps', '1']     # should a bad argument be accepted: one step
    files = lambda: sorted(str(p) for p in [*d.rglob('*'), *run.rglob('*')] if p.is_file())
    before = files()
    rc, out, err = run_main(argv, capsys)
    ok = clean_error(rc, err, f'dinof: error: {starts.format(d=d, run=run)}')
    count('bad inputs', ok, f'dinof {args}: status {rc}, {err.strip()[-160:]!r}')
    assert files() == before, 'a rejected command wrote a file'
    assert ok, (rc, err)

REAL = [  # through the installed console script (the in-process cases above run the same code without the start-up)
    ('train --preset toy2d --set sde.t_m=0 --workdir {w}', '--set: sde.t_m: must be > 0'),
    ('sample --checkpoint {d}/empty', '--checkpoint: {d}/empty holds no checkpoint'),
]

@pytest.mark.parametrize('args, starts', REAL, ids=[a.split(' --workdir')[0] for a, _ in REAL])
def test_a_bad_command_line_in_a_real_process(places, args, starts, tmp_path):
    d, run = places
    r = dinof(*args.format(d=d, w=tmp_path / 'w').split(), '--no-progress')
    ok = clean_error(r.returncode, r.stderr, f'dinof: error: {starts.format(d=d)}') and r.stdout == ''
    count('bad inputs', ok, f'dinof {args} (real process): {r.returncode} {r.stderr[-200:]!r}')
    assert ok, (r.returncode, r.stdout, r.stderr)
    assert not (tmp_path / 'w').exists()
