"""The reliability suite's summary: each test records what it saw in `harness` (crashes survived, bad inputs rejected
cleanly, files lost, peak memory), and this hook prints one line at the end of the session."""
import os, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import harness

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long-running test, skipped unless --runslow is given')

def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = harness.summary()
    if not lines: return
    terminalreporter.write_sep('=', 'reliability summary')
    for l in lines: terminalreporter.write_line(l)
    out = os.environ.get('DINOF_RELIABILITY_SUMMARY')     # a copy for scripts (e.g. the README's figures)
    if out: Path(out).write_text('\n'.join(lines) + '\n')

@pytest.fixture(scope='session')
def toy_run(tmp_path_factory):
    "A finished 16-step toy2d run (checkpoints at 8 and 16) made once per session, to copy from; and its config."
    import torch
    from dinof.config import get_config
    from dinof.train import Trainer
    torch.set_num_threads(1)
    wd = tmp_path_factory.mktemp('toy_run') / 'run'
    cfg = get_config('toy2d', *harness.TOY, 'training.snapshot_freq=8', 'training.n_iters=16')
    Trainer(cfg, wd, progress=False).train()
    return wd, cfg

@pytest.fixture(autouse=True)
def _one_thread():
    "One intra-op thread while a reliability test runs (bit-exact comparisons with the one-thread subprocesses; a small shared machine)."
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
