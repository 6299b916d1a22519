"`dinof.core.Progress` and every place that reports through it: the lines a log gets, the bar a terminal gets, nothing when off, and results that do not depend on it."
import io, re, sys
import pytest
import torch
from torch import nn
import dinof.core as core
from dinof.cli import main
from dinof.config import get_config
from dinof.core import Progress
from dinof.likelihood import log_likelihood
from dinof.metrics import Extractor, compute_stats, feature_batches
from dinof.sampling import GaussianPrior, hybrid_sample
from dinof.sde import VESDE, VPSDE
from dinof.train import Trainer


class _Tty(io.StringIO):
    "An output that says it is a terminal."
    def isatty(self): return True


def _lines(err: str, what: str, total: int | None = None) -> list[int]:
    "The step counts of the plain lines `what k/total  12 s[, 3 s left][  comment]`; fails on any other line."
    tot = rf'/{total}' if total else ''
    pat = re.compile(rf'{re.escape(what)} (\d+){tot}  \d+ (s|min \d\d s|h \d\d min)(, \d+ (s|min \d\d s|h \d\d min) left)?(  .+)?')
    done = []
    for line in err.splitlines():
        m = pat.fullmatch(line)
        assert m, f'not a progress line: {line!r}'
        done.append(int(m[1]))
    return done


class _Clock:
    "A fake `time.monotonic` that moves only when told."
    def __init__(self): self.t = 1000.
    def __call__(self): return self.t


def test_plain_lines_follow_the_clock_and_the_tenths(monkeypatch, capsys):
    "A slow loop gets a line every `every` seconds; a fast one a line each tenth; the durations read as a person writes them."
    clock = _Clock()
    monkeypatch.setattr(core.time, 'monotonic', clock)
    p = Progress(None, True, total=10_000, what='step', every=60.)
    for k in range(1, 200):     # 30 s a step: 1,000 steps (a tenth) take 8 h 20 min, a line every 60 s comes first
        clock.t += 30.; p.update(k)
    p.close()
    out, err = capsys.readouterr()
    assert out == '' and _lines(err, 'step', 10_000) == list(range(2, 200, 2)) + [199]
    assert err.splitlines()[0] == 'step 2/10000  60 s, 83 h 19 min left'
    assert err.splitlines()[-1].startswith('step 199/10000  1 h 39 min, ')
    assert core._duration(59.6) == '60 s' and core._duration(125) == '2 min 05 s' and core._duration(7300) == '2 h 01 min'


def test_off_writes_nothing_and_forced_modes(capsys):
    assert list(Progress(range(5), False)) == list(range(5)) and capsys.readouterr() == ('', '')
    assert list(Progress(range(5), None)) == list(range(5)) and capsys.readouterr() == ('', '')
    assert Progress([], 'plain').mode == 'plain' and Progress([], False).mode == 'off'
    with pytest.raises(ValueError, match='total: must be an integer >= 0'): Progress(None, total=-1)


def test_a_terminal_gets_a_bar(monkeypatch):
    out, err = _Tty(), io.StringIO()
    monkeypatch.setattr(sys, 'stdout', out); monkeypatch.setattr(sys, 'stderr', err)
    p = Progress(range(30), True, what='x')
    assert p.mode == 'terminal' and list(p) == list(range(30))
    assert '\r' in out.getvalue() and '[30/30' in out.getvalue() and err.getvalue() == ''


# ---- sampling
@pytest.mark.parametrize('kw,what,total', [(dict(method='pc', steps=7), 'sampling step', 7),
                                           (dict(method='heun', steps=4), 'sampling step', 4),
                                           (dict(method='dpm2', steps=3, noise_removal=True), 'sampling step', 3),
                                           (dict(method='rk45'), 'sampling (time, per mille)', 1000)])
def test_sampling_reports_every_step_and_changes_nothing(capsys, kw, what, total):
    sde, net = VPSDE(), lambda x, t: -x * (1 + t[:, None])
    prior = GaussianPrior(sde, (4,))
    shown = hybrid_sample(prior, sde, net, n=3, progress=True, **kw)
    out, err = capsys.readouterr()
    done = _lines(err, what, total)
    assert out == '' and done[-1] == total and done == sorted(done) and len(done) <= 11
    quiet = hybrid_sample(prior, sde, net, n=3, **kw)
    assert capsys.readouterr() == ('', '')
    assert torch.equal(shown.samples, quiet.samples) and shown.nfe == quiet.nfe


def test_sampling_in_a_terminal_draws_a_bar(monkeypatch):
    out, err = _Tty(), io.StringIO()
    monkeypatch.setattr(sys, 'stdout', out); monkeypatch.setattr(sys, 'stderr', err)
    sde = VESDE()
    res = hybrid_sample(GaussianPrior(sde, (4,)), sde, lambda x, t: -x, n=2, steps=5, progress=True)
    assert res.nfe == 10 and '\r' in out.getvalue() and '[5/5' in out.getvalue() and err.getvalue() == ''


# ---- FID features and statistics
def _extractor():
    return Extractor('tiny', nn.Sequential(nn.AvgPool2d(4), nn.Flatten()), batch_size=10)


def test_features_and_stats_report_batches(capsys):
    imgs = torch.randint(0, 256, (45, 1, 8, 8), dtype=torch.uint8)
    ext = _extractor()
    st = compute_stats(imgs, ext, progress=True)
    out, err = capsys.readouterr()
    assert out == '' and _lines(err, 'feature batch', 5) == [1, 2, 3, 4, 5]
    quiet = compute_stats(imgs, ext)
    f = ext.features(imgs, progress=True)
    assert _lines(capsys.readouterr().err, 'feature batch', 5) == [1, 2, 3, 4, 5]
    assert (st.mu == quiet.mu).all() and (st.sigma == quiet.sigma).all() and torch.equal(f, ext.features(imgs))
    list(feature_batches(imgs, ext))
    assert capsys.readouterr() == ('', '')


# ---- likelihood
def test_likelihood_reports_the_time_covered(capsys):
    sde = VPSDE()
    prior = GaussianPrior(sde, (3,))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    net = lambda x, t: -x / (1 + t[:, None])
    a = log_likelihood(x, prior, sde, net, trace='exact', progress=True)
    out, err = capsys.readouterr()
    done = _lines(err, 'likelihood ODE (time, per mille)', 1000)
    assert out == '' and done[-1] == 1000 and done == sorted(done) and len(done) <= 11
    assert torch.equal(a, log_likelihood(x, prior, sde, net, trace='exact')) and capsys.readouterr() == ('', '')


# ---- training
def _toy(*over):
    return get_config('toy2d', 'training.n_iters=12', 'training.batch_size=32', 'training.log_freq=4', 'training.snapshot_freq=100', *over)


def test_training_reports_one_line_per_log_and_trains_the_same(tmp_path, capsys):
    t = Trainer(_toy(), tmp_path / 'on', progress=True, device='cpu'); t.train()
    out, err = capsys.readouterr()
    assert _lines(err, 'training step', 12) == [4, 8, 12] and out == ''
    assert all(re.search(r'  score \S+  flow \S+ nats = \S+ bits/dim  lr \S+  \d+ img/s$', l) for l in err.splitlines()), err
    q = Trainer(_toy(), tmp_path / 'off', progress=False, device='cpu'); q.train()
    assert capsys.readouterr() == ('', '')
    for a, b in zip([*t.score_model.parameters(), *t.flow.parameters()], [*q.score_model.parameters(), *q.flow.parameters()]):
        assert torch.equal(a, b)


def test_training_in_a_terminal_shows_the_losses_on_the_bar(tmp_path, monkeypatch):
    out, err = _Tty(), io.StringIO()
    monkeypatch.setattr(sys, 'stdout', out); monkeypatch.setattr(sys, 'stderr', err)
    Trainer(_toy(), tmp_path, progress=True, device='cpu').train()
    assert '[12/12' in out.getvalue() and 'score ' in out.getvalue() and err.getvalue() == ''


# ---- the CLI: on unless --no-progress, and a log file gets lines, never a bar's carriage returns
def test_cli_progress_lines_and_no_progress(tmp_path, capsys):
    wd = str(tmp_path / 'run')
    toy = ['--preset', 'toy2d', '--set', 'training.n_iters=6', '--set', 'training.batch_size=32', '--set', 'training.log_freq=3']
    assert main(['train', *toy, '--workdir', wd, '--device', 'cpu']) == 0
    out, err = capsys.readouterr()
    assert _lines(err, 'training step', 6) == [3, 6] and out == f'step 6: {wd}/ckpt_00000006.pt\n'
    runs = {'sample': ['sample', '--checkpoint', wd, '--n', '30', '--steps', '3', '--batch-size', '10', '--out', str(tmp_path / 's.npz')],
            'eval': ['eval', '--checkpoint', wd, '--metric', 'bpd', '--n', '2', '--batch-size', '1']}
    for name, what, total in (('sample', 'sampling batch', 3), ('eval', 'bits/dim batch', 2)):
        assert main(runs[name]) == 0
        out, err = capsys.readouterr()
        assert _lines(err, what, total) == list(range(1, total + 1)) and '\r' not in out + err
    assert main(runs['sample'] + ['--no-progress']) == 0
    out2, err2 = capsys.readouterr()
    assert err2 == '' and out2.startswith(f'wrote 30 samples to {tmp_path}/s.npz: step 6, flow prior, pc, 3 network evaluations')
