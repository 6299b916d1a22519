"""1. Crash anywhere. `dinof train` (the console script, toy2d preset, a checkpoint after every step so that writes are
often in flight) is killed with SIGKILL at random moments, resumed with `--resume` each time, then run to the end.
The moments are keyed to the run's progress as its log shows it (a random point of its start-up, or a random step
soon after it), not to the clock, so that a machine 3x faster or 2x slower kills at the same places; a run that ends
before its kill fails the test with the reason.
After every kill, every checkpoint on disk must load and `latest` must name a complete one; at the end the parameters,
EMA, optimizer and scheduler must equal, bit for bit, those of a run that was never interrupted (CPU, fixed seed, one
thread), and the log must hold the uninterrupted run's records (also after a restart before the first checkpoint: the
last test). The CI variant kills 3 times; the `slow` one 20 times."""
import json, os, random, signal, time
from pathlib import Path
import pytest
from harness import ENV, TOY, audit, count, dinof, log_steps, lost, popen_dinof, sets, state_mismatches, FIGURES

def _train_args(wd: Path, n_iters: int) -> list:
    return ['train', '--preset', 'toy2d', '--no-progress', '--resume', '--workdir', wd,
            *sets(*TOY, 'training.snapshot_freq=1', f'training.n_iters={n_iters}')]

def _kill_once(wd: Path, n_iters: int, rng: random.Random, early: bool, log: Path, startup: float | None) -> dict:
    """Start a resume and SIGKILL it at a moment keyed to its progress, not to the clock (a machine 3x faster or 2x slower
    kills at the same steps): `early`, at a random point of its start-up (imports, loading the checkpoint, rewriting the
    log), a uniform fraction of `startup` (the start-up time measured on earlier resumes) and at the latest as soon as it
    has trained a step; otherwise once it has trained 1 to 4 steps, plus a random part of a step (each step ends with a
    checkpoint write). A run that ends before its kill fails the test with the reason (it should not: the kill comes
    within a few steps of the start, far from `n_iters`)."""
    before = audit(wd)
    start = before['latest'] or max(before['steps'], default=0)
    # a killed run may have logged steps past its last checkpoint: only steps past those are the new process's own
    old = max([start, *log_steps(wd)])
    target = old + (1 if early else rng.randint(1, 4))
    delay = rng.uniform(0, startup) if early and startup else float('inf')
    p = popen_dinof(*_train_args(wd, n_iters), log=log)
    t0 = time.monotonic()
    seen = {}                                            # step -> when the poll first saw it
    while p.poll() is None:
        now = time.monotonic()
        for s in log_steps(wd):
            if s > old: seen.setdefault(s, now)
        if now - t0 >= delay or max(seen, default=0) >= target: break
        if now - t0 > 600: pytest.fail(f'no step past {old} logged after 600 s: {log.read_text()[-2000:]}')
        time.sleep(0.005)
    first_step = min(seen.values(), default=None)
    if not early and p.poll() is None and len(seen) >= 2:   # a random part of a step, as long as a step takes here
        time.sleep(rng.uniform(0, (max(seen.values()) - first_step) / (max(seen) - min(seen))))
    if p.poll() is not None:
        pytest.fail(f'the resume from step {start} ended (exit status {p.returncode}, last logged step {max(log_steps(wd), default=None)}) '
                    f'before its kill at step {target}: the kill is keyed to steps, so n_iters={n_iters} is too few? '
                    f'{log.read_text()[-2000:]}')
    p.send_signal(signal.SIGKILL)
    rc = p.wait(timeout=60)
    after = audit(wd)
    return {'rc': rc, 'start': start, 'target': target, 'after': after, 'in_write': bool(after['tmp']),
            'startup': None if first_step is None else first_step - t0, 'seconds': time.monotonic() - t0, 'log': log.read_text()[-2000:]}

def crash_loop(tmp_path: Path, kills: int, n_iters: int, seed: int):
    rng = random.Random(seed)
    straight = popen_dinof(*_train_args(tmp_path / 'straight', n_iters), log=tmp_path / 'straight.txt')  # meanwhile: the reference
    wd, survived, in_write, progress = tmp_path / 'killed', 0, 0, []
    startups, where = [], []                             # how long resumes took to train their first step; where kills landed
    for i in range(kills):
        r = _kill_once(wd, n_iters, rng, early=(i % 4 == 1), log=tmp_path / f'kill{i}.txt', startup=max(startups, default=None))
        if r['startup'] is not None: startups.append(r['startup'])
        a = r['after']
        newest = max(a['steps'], default=0)
        # a kill may leave a temporary file (a write in flight), never a damaged checkpoint, and never goes backwards
        # (`latest` may lag the newest file by one: killed between the checkpoint's rename and the pointer's)
        ok = r['rc'] == -signal.SIGKILL and not a['bad'] and (a['latest'] in a['steps'] or a['latest'] is None) and newest >= r['start']
        count('crashes', ok, f'kill {i}: rc {r["rc"]}, after {a}')
        lost(len(a['bad']), f'kill {i}: {a["bad"]}')
        assert ok, (i, r)
        survived += 1; in_write += r['in_write']; progress.append(newest)
        where.append(f"{r['start']}->{'start-up' if r['startup'] is None else r['target']}")
    FIGURES['kills in a write'] = FIGURES.get('kills in a write', 0) + in_write
    FIGURES[f'kills of {kills} (resumed from -> killed at step)'] = ', '.join(where)
    assert straight.wait(timeout=900) == 0, (tmp_path / 'straight.txt').read_text()[-3000:]
    r = dinof(*_train_args(wd, n_iters))                 # the last resume runs to the end
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[-1] == f'step {n_iters}: {wd}/ckpt_{n_iters:08d}.pt'
    a = audit(wd)
    lost(len(a['bad']), f'end: {a["bad"]}')
    assert not a['bad'] and not a['tmp'] and a['latest'] == n_iters, a    # a new start clears stale temporary files
    from dinof.train import load_checkpoint
    ref, got = load_checkpoint(tmp_path / 'straight' / f'ckpt_{n_iters:08d}.pt'), load_checkpoint(wd / f'ckpt_{n_iters:08d}.pt')
    diff = state_mismatches(ref, got)
    lost(int(bool(diff)), f'final state differs from the uninterrupted run in {diff[:5]}')
    assert not diff, diff
    # the log: the same records (a resume cuts the log back to its checkpoint's step, a fresh start begins it anew)
    recs = lambda wd: [{k: v for k, v in json.loads(l).items() if k not in ('images_per_s', 'seconds')}
                       for l in (wd / 'log.jsonl').read_text().splitlines()]
    mine, theirs = recs(wd), recs(tmp_path / 'straight')
    assert list({r['step']: r for r in mine}.values()) == theirs, 'the log should hold the uninterrupted run\'s records'
    FIGURES['log lines repeated by restarts'] = FIGURES.get('log lines repeated by restarts', 0) + len(mine) - len(theirs)
    return survived, in_write, progress

def test_kill_9_three_times_then_resume_is_bit_exact(tmp_path):
    survived, in_write, progress = crash_loop(tmp_path, kills=3, n_iters=60, seed=1)
    assert survived == 3

@pytest.mark.slow   # ~4-6 minutes: 22 starts of `dinof train`, each ~8 s of imports on a small machine
def test_kill_9_twenty_times_then_resume_is_bit_exact(tmp_path):
    survived, in_write, progress = crash_loop(tmp_path, kills=20, n_iters=300, seed=20)
    assert survived == 20
    assert in_write >= 1, 'with a checkpoint every step, some kill should land inside a write'

def test_a_restart_before_the_first_checkpoint_starts_the_log_afresh(tmp_path):
    "A run dies (any exception; SIGKILL alike) before its first checkpoint; the restart must not repeat steps in the log."
    import torch
    from dinof.config import get_config
    from dinof.train import Trainer
    torch.set_num_threads(1)
    cfg = get_config('toy2d', *TOY, 'training.snapshot_freq=100', 'training.n_iters=8')
    def die(trainer, rec):
        if rec['step'] == 5: raise KeyboardInterrupt('killed')
    with pytest.raises(KeyboardInterrupt): Trainer(cfg, tmp_path, progress=False, callbacks=[die]).train()
    assert log_steps(tmp_path) == [1, 2, 3, 4, 5] and not list(tmp_path.glob('ckpt_*.pt'))
    Trainer(cfg, tmp_path, progress=False, resume=True).train()
    steps = log_steps(tmp_path)
    count('crashes', steps == list(range(1, 9)), f'restart before the first checkpoint: log steps {steps}')
    assert steps == list(range(1, 9)), steps
