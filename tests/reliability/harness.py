"""Shared machinery of the reliability suite: running `dinof` as a user does (the installed console script), measuring a
child's peak memory, auditing a run folder's checkpoints, comparing training states, and the tally behind the summary
line that `conftest.py` prints at the end of the session."""
from __future__ import annotations
import json, os, resource, subprocess, sys, sysconfig, time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
import torch

SCRIPTS = Path(sysconfig.get_path('scripts'))
DINOF = SCRIPTS / 'dinof'
# one thread per process: bit-exact comparisons across processes need one float reduction order (and the machine is small)
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONDONTWRITEBYTECODE': '1', 'DINOF_DEVICE': 'cpu',
       'MALLOC_MMAP_THRESHOLD_': '33554432', 'MALLOC_TRIM_THRESHOLD_': '4294967296', 'MALLOC_TOP_PAD_': '536870912'}
TOY = ['training.batch_size=64', 'training.log_freq=1', 'training.keep=3']   # the toy2d preset, small batches, a log line per step

def sets(*overrides: str) -> list[str]:
    "`--set` arguments for `dinof train`."
    return [a for o in overrides for a in ('--set', o)]

# ---------------------------------------------------------------- the tally behind the summary line
TALLY: dict[str, list[int]] = defaultdict(lambda: [0, 0])   # kind -> [clean, total]
FAILED: dict[str, list[str]] = defaultdict(list)             # kind -> cases that were not clean
FIGURES: dict[str, object] = {}

def count(kind: str, ok: bool, case: str = '') -> bool:
    "Record one case of `kind` (e.g. 'bad inputs') as clean or not; returns `ok` so a test can assert on it."
    TALLY[kind][0] += bool(ok); TALLY[kind][1] += 1
    if not ok: FAILED[kind].append(' '.join(case.split())[:220])
    return ok

def lost(n: int, case: str = ''):
    "Record `n` files lost (a checkpoint gone, partial, unloadable or changed when it should not have been)."
    TALLY['files lost'][0] += n; TALLY['files lost'][1] += 1
    if n: FAILED['files lost'].append(f'{n}: {case}')

def gb(b: float) -> str: return f'{b / 2 ** 30:.2f} GB'

def summary() -> list[str]:
    "The summary line, then one line per detail; empty when no reliability test recorded anything."
    if not TALLY and not FIGURES: return []
    parts = []
    if 'crashes' in TALLY:
        ok, n = TALLY['crashes']
        w = FIGURES.get('kills in a write', 0)
        parts.append(f'crashes survived {ok}/{n} ({w} inside a checkpoint write)')
    if 'bad inputs' in TALLY: parts.append('bad inputs {}/{} rejected cleanly'.format(*TALLY['bad inputs']))
    if 'files lost' in TALLY: parts.append(f'files lost {TALLY["files lost"][0]}')
    if 'numerical faults' in TALLY: parts.append('numerical faults stopped {}/{}'.format(*TALLY['numerical faults']))
    if 'bounded memory' in TALLY: parts.append('pipelines in bounded memory {}/{}'.format(*TALLY['bounded memory']))
    if 'rank failures' in TALLY: parts.append('rank failures detected {}/{}'.format(*TALLY['rank failures']))
    rss = FIGURES.get('rss', {})
    fmt = lambda by_n: f'{gb(by_n[max(by_n)])} at N={max(by_n)}' + ''.join(f' ({gb(by_n[n])} at N={n})' for n in sorted(by_n, reverse=True)[1:])
    head = 'sampling + features (API)' if 'sampling + features (API)' in rss else next(iter(sorted(rss)), None)
    if head: parts.append(f'peak RSS {fmt(rss[head])}' + (' (sampling + features through the API)' if head.endswith('(API)') else f' ({head})'))
    flat = FIGURES.get('rss flat', {})
    growth = {w: b[max(b)] - b[min(b)] for w, b in rss.items() if not flat.get(w, True)}
    worst = max(growth, key=growth.get, default=None)
    if worst: parts.append(f'but {worst}: {fmt(rss[worst])}')
    lines = [', '.join(parts)]
    for k, cases in FAILED.items():
        lines += [f'  not clean ({k}): {c}' for c in cases]
    for what, by_n in sorted(rss.items()):
        grew = by_n[max(by_n)] - by_n[min(by_n)]
        lines.append(f'  peak RSS of {what}: {fmt(by_n)}, {"flat" if flat.get(what, True) else "GROWS"} (+{grew / 2 ** 20:.0f} MB)')
    for k, v in FIGURES.items():
        if k not in ('rss', 'rss flat', 'kills in a write'): lines.append(f'  {k}: {v}')
    return lines

# ---------------------------------------------------------------- running dinof
def dinof(*args, env=None, timeout=600, cwd=None, **kw) -> subprocess.CompletedProcess:
    "Run the installed `dinof` console script, output captured."
    return subprocess.run([str(DINOF), *map(str, args)], capture_output=True, text=True, env=env or ENV, timeout=timeout, cwd=cwd, **kw)

def popen_dinof(*args, env=None, log=None, **kw) -> subprocess.Popen:
    "Start the `dinof` console script; its stdout and stderr go to the file `log` (or are discarded)."
    out = open(log, 'w') if log else subprocess.DEVNULL
    try: return subprocess.Popen([str(DINOF), *map(str, args)], stdout=out, stderr=subprocess.STDOUT, env=env or ENV, **kw)
    finally:
        if log: out.close()

def wait_rusage(p: subprocess.Popen, timeout: float) -> tuple[int, int]:
    "Wait for `p` (killing it after `timeout` s); its exit status and its peak resident memory in bytes (`wait4`'s ru_maxrss)."
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid: break
        if time.monotonic() > deadline: p.kill()
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_maxrss * 1024           # Linux reports kilobytes

def clean_error(rc, err: str, starts: str = 'dinof: error: ', status: int = 2) -> bool:
    "A user error as the project promises it: exit `status`, exactly one line on stderr, no traceback."
    return rc == status and err.count('\n') == 1 and err.endswith('\n') and 'Traceback' not in err and err.startswith(starts)

def run_main(argv: list[str], capsys) -> tuple[int | str, str, str]:
    "`dinof.cli.main(argv)` in this process: `(status, stdout, stderr)`; an exception that escapes is a traceback, reported as status 'traceback'."
    import traceback
    from dinof.cli import main
    capsys.readouterr()
    try: rc = main([str(a) for a in argv])
    except SystemExit as e: rc = e.code
    except BaseException:          # what the console script would print as a traceback
        out, err = capsys.readouterr()
        return 'traceback', out, err + traceback.format_exc()
    out, err = capsys.readouterr()
    return rc, out, err

def one_line(msg: str) -> bool: return '\n' not in msg.strip() and 'Traceback' not in msg and len(msg) > 0

# ---------------------------------------------------------------- run folders and checkpoints
def log_steps(wd: Path) -> list[int]:
    "The steps of the complete lines of a run's log (the last line may be half written while the run goes on)."
    p = Path(wd) / 'log.jsonl'
    try: text = p.read_text()
    except FileNotFoundError: return []
    out = []
    for line in text.split('\n')[:-1]:
        try: out.append(json.loads(line)['step'])
        except (ValueError, KeyError): pass
    return out

def audit(wd: Path) -> dict:
    "Every `ckpt_*.pt` of a run folder loaded: `{'steps': [...], 'bad': [names that do not load], 'latest': step or None, 'tmp': [...]}`."
    from dinof.train import load_checkpoint
    wd = Path(wd)
    steps, bad = [], []
    for p in sorted(wd.glob('ckpt_*.pt')):
        try: ck = load_checkpoint(p); assert ck['step'] == int(p.name[5:-3]); steps.append(ck['step'])
        except (ValueError, AssertionError, KeyError): bad.append(p.name)
    latest = None
    if (wd / 'latest').exists():
        try: latest = load_checkpoint(wd / (wd / 'latest').read_text().strip())['step']
        except (ValueError, OSError): bad.append('latest -> ' + (wd / 'latest').read_text().strip())
    return {'steps': steps, 'bad': bad, 'latest': latest, 'tmp': sorted(p.name for p in wd.glob('.*.tmp'))}

def snapshot(folder: Path) -> dict[str, bytes]:
    "Name -> bytes of every file directly in `folder` (to prove nothing was written)."
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}

def state_mismatches(a: dict, b: dict) -> list[str]:
    "The keys where two training checkpoints differ (networks, EMA, optimizer, scheduler, step), bit for bit."
    out = []
    def cmp(x, y, where):
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)): out.append(where)
        elif isinstance(x, dict):
            if not isinstance(y, dict) or set(x) != set(y): out.append(where); return
            for k in x: cmp(x[k], y[k], f'{where}.{k}')
        elif isinstance(x, (list, tuple)):
            if not isinstance(y, (list, tuple)) or len(x) != len(y): out.append(where); return
            for i, (u, v) in enumerate(zip(x, y)): cmp(u, v, f'{where}[{i}]')
        elif x != y: out.append(where)
    for key in ('step', 'score', 'flow', 'ema_score', 'ema_flow', 'optimizer', 'scheduler'): cmp(a[key], b[key], key)
    return out

# ---------------------------------------------------------------- faults
@contextmanager
def file_size_limit(nbytes: int):
    "Writes past `nbytes` in any file fail with EFBIG in this process (RLIMIT_FSIZE; Python ignores SIGXFSZ), as on a full disk."
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try: yield
    finally: resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

@contextmanager
def tmpfs(path: Path, size: str):
    "A small tmpfs mounted at `path` (a real ENOSPC when it fills); skips the test where mounting is not allowed."
    import pytest
    path = Path(path); path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)], capture_output=True, text=True)
    if r.returncode != 0: pytest.skip(f'cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})')
    try: yield path
    finally: subprocess.run(['umount', '-l', str(path)], capture_output=True)

class Evil:
    "A pickle payload: unpickling it with code allowed creates the folder `marker` (os.makedirs)."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.makedirs, (self.marker,))
