"""6. Several processes. Two training processes (gloo on the loopback, the rendezvous torchrun would set up: RANK,
WORLD_SIZE, MASTER_ADDR/PORT) with a short `dist_timeout`. One rank is SIGKILLed mid-run: the other must exit with an
error, not hang. One rank is frozen (SIGSTOP, as a hung node): the other must give up after the timeout. Then a resume
with both ranks runs to the end from the last checkpoint."""
import json, os, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path
import pytest
from harness import ENV, TOY, audit, count, log_steps, lost, state_mismatches, FIGURES

SCRIPT = textwrap.dedent('''
    import json, os, sys, torch
    torch.set_num_threads(1)
    from dinof.config import get_config
    from dinof.train import Trainer
    wd, over, timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    t = Trainer(get_config('toy2d', *over), wd, progress='plain', resume=True, dist_timeout=timeout)
    print('start', t.step, flush=True)
    t.train(); t.close()
    print('done', t.step, flush=True)
''')
OVER = [*TOY, 'training.snapshot_freq=2']

def _port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _launch(tmp: Path, wd: Path, n_iters: int, timeout: float, tag: str) -> list[subprocess.Popen]:
    "Two ranks of SCRIPT, outputs in tmp/{tag}{rank}.txt."
    script = tmp / 'ddp.py'; script.write_text(SCRIPT)
    port, procs = _port(), []
    for rank in range(2):
        env = {**ENV, 'RANK': str(rank), 'LOCAL_RANK': str(rank), 'WORLD_SIZE': '2', 'LOCAL_WORLD_SIZE': '2',
               'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)}
        out = open(tmp / f'{tag}{rank}.txt', 'w')
        procs.append(subprocess.Popen([sys.executable, str(script), str(wd), json.dumps([*OVER, f'training.n_iters={n_iters}']), str(timeout)],
                                      stdout=out, stderr=subprocess.STDOUT, env=env))
        out.close()
    return procs

def _wait_steps(wd: Path, k: int, procs, limit=600):
    """Wait until step `k` is logged: faults are keyed to steps, not to the clock, so they land mid-run on a machine 3x
    faster or 2x slower alike (polled every 5 ms; a run has at least 15 steps, each with a collective, left after `k`)."""
    t0 = time.monotonic()
    while max(log_steps(wd), default=0) < k:
        assert all(p.poll() is None for p in procs), f'a rank ended before step {k}: {[p.poll() for p in procs]}'
        assert time.monotonic() - t0 < limit, f'no step {k} logged after {limit} s'
        time.sleep(0.005)

def _fault(tmp: Path, wd: Path, victim: int, how: str, timeout: float, n_iters: int):
    "Start two ranks, wait for a few steps, hit rank `victim`; how long the survivor takes to exit, and its status."
    procs = _launch(tmp, wd, n_iters, timeout, how)
    k = max(log_steps(wd), default=0) + 3
    _wait_steps(wd, k, procs)
    procs[victim].send_signal(signal.SIGKILL if how == 'kill' else signal.SIGSTOP)
    if procs[victim].poll() not in (None, -signal.SIGKILL):   # the fault must hit a running rank, not one that has finished
        pytest.fail(f'rank {victim} ended (status {procs[victim].returncode}) before its fault after step {k} of {n_iters}')
    t0, survivor = time.monotonic(), procs[1 - victim]
    try: rc = survivor.wait(timeout=timeout + 120)
    except subprocess.TimeoutExpired: rc = None
    took = time.monotonic() - t0
    for p in procs:
        if p.poll() is None: p.kill(); p.wait()
    text = (tmp / f'{how}{1 - victim}.txt').read_text()
    last = [l for l in text.splitlines() if l.strip()][-1:] or ['']
    ok = rc not in (None, 0)
    count('rank failures', ok, f'rank {victim} {how}: the survivor {"hung" if rc is None else f"exited {rc}"} after {took:.0f} s: {last[0][:200]}')
    FIGURES[f'DDP, rank {victim} {"killed" if how == "kill" else "frozen"}'] = (
        f'rank {1 - victim} exited with status {rc} after {took:.1f} s ({last[0][:120]})')
    a = audit(wd)
    lost(len(a['bad']), f'DDP {how}: {a["bad"]}')
    assert ok, (rc, took, text[-3000:])
    assert not a['bad'] and a['latest'] is not None, a
    return took

def _resume_and_compare(tmp: Path, wd: Path, n_iters: int, reference: Path, atol: float = 0.):
    "Resume with both ranks to `n_iters`; the state must equal the reference's (bit for bit, or within `atol` for the networks)."
    procs = _launch(tmp, wd, n_iters, 60, 'resume')
    assert [p.wait(timeout=600) for p in procs] == [0, 0], (tmp / 'resume0.txt').read_text()[-3000:]
    import torch
    from dinof.train import load_checkpoint
    a, b = load_checkpoint(reference / f'ckpt_{n_iters:08d}.pt'), load_checkpoint(wd / f'ckpt_{n_iters:08d}.pt')
    if atol == 0: diff = state_mismatches(a, b)
    else: diff = [f'{k}.{n}' for k in ('score', 'flow', 'ema_score', 'ema_flow') for n, v in a[k].items()
                  if isinstance(v, torch.Tensor) and not torch.allclose(v.float(), b[k][n].float(), rtol=0, atol=atol)]
    lost(int(bool(diff)), f'DDP resume differs from the uninterrupted run in {diff[:5]}')
    assert not diff, diff

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "An uninterrupted two-process run of 40 steps, started in the background (it runs while a fault test runs)."
    tmp = tmp_path_factory.mktemp('ddp_ref')
    procs = _launch(tmp, tmp / 'run', 40, 60, 'ref')
    def get():
        assert [p.wait(timeout=600) for p in procs] == [0, 0], (tmp / 'ref0.txt').read_text()[-3000:]
        return tmp / 'run'
    return get

def test_a_killed_rank_makes_the_other_exit_and_the_resume_works(tmp_path):
    "CI: rank 1 killed; the resumed two-process run matches a one-process run up to float summation order (as in test_train)."
    took = _fault(tmp_path, tmp_path / 'run', victim=1, how='kill', timeout=30, n_iters=20)
    assert took < 30 + 60
    from dinof.config import get_config
    from dinof.train import Trainer
    Trainer(get_config('toy2d', *OVER, 'training.n_iters=20'), tmp_path / 'one', progress=False).train()
    _resume_and_compare(tmp_path, tmp_path / 'run', 20, tmp_path / 'one', atol=2e-5)

@pytest.mark.slow   # ~1 minute: the survivor waits out its 20 s timeout
@pytest.mark.parametrize('victim, how', [(0, 'kill'), (1, 'stop'), (0, 'stop')])
def test_a_dead_or_frozen_rank_makes_the_other_exit(tmp_path, reference, victim, how):
    timeout = 20
    took = _fault(tmp_path, tmp_path / 'run', victim=victim, how=how, timeout=timeout, n_iters=40)
    assert took < timeout + 60
    _resume_and_compare(tmp_path, tmp_path / 'run', 40, reference())
