"""5. Numerical faults. A NaN batch, a learning rate that diverges, and an overflow on the flow under bf16 autocast
(its weights blown up, or an input beyond bf16's range): training must stop before the bad update with a message that
names the step and the term (exit status 1 from `dinof train`), keep the last good checkpoint (finite, loadable, `latest`
pointing at it) and write no other; a resume from it must work. And a trained flow must stay invertible: decode(encode(x))
within 1e-4 of x in float32, after float32 and after bf16 training, for the toy coupling flow and a small Glow."""
import math, re, shutil
from pathlib import Path
import pytest
import torch
import dinof.train as T
from dinof.config import get_config
from dinof.train import Trainer, load_checkpoint, load_models
from harness import TOY, audit, clean_error, count, lost, run_main, sets

ARGS = ['train', '--preset', 'toy2d', '--no-progress', *sets(*TOY, 'training.snapshot_freq=4', 'training.n_iters=12')]

def _finite(ck: dict) -> bool:
    return all(torch.isfinite(v).all() for k in ('score', 'flow', 'ema_score', 'ema_flow') for v in ck[k].values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())

def _check_stop(wd: Path, rc, err: str, step: int, terms: tuple, case: str):
    "Exit 1, one line naming the step and a term and the last good checkpoint; that checkpoint kept, finite, and nothing newer."
    last = 4 * ((step - 1) // 4)
    m = re.match(rf'dinof: error: step {step}: the ({"|".join(terms)}) (loss is (nan|inf|-inf)|network)', err)
    ok = clean_error(rc, err, status=1) and m is not None and (f'ckpt_{last:08d}.pt' in err if last else 'none' in err)
    count('numerical faults', ok, f'{case}: status {rc}, {err.strip()!r}')
    a = audit(wd)
    good = a['latest'] == (last or None) and a['steps'] == [s for s in (4, 8) if s <= last] and not a['bad'] and not a['tmp']
    good = good and all(_finite(load_checkpoint(wd / f'ckpt_{s:08d}.pt')) for s in a['steps'])
    lost(int(not good), f'{case}: {a}')
    assert ok, (rc, err)
    assert good, a
    return last

@pytest.mark.parametrize('where', ['score and flow', 'flow only'])
def test_a_nan_batch_stops_training_naming_step_and_term(where, tmp_path, capsys, monkeypatch):
    real = T.Trainer._batch
    monkeypatch.setattr(T.Trainer, '_batch', lambda self, step, lo: real(self, step, lo) * (math.nan if step == 10 else 1.))
    extra = sets('training.w_score=0') if where == 'flow only' else []
    rc, out, err = run_main([*ARGS, *extra, '--workdir', tmp_path], capsys)
    _check_stop(tmp_path, rc, err, 10, ('score', 'flow') if where != 'flow only' else ('flow',), f'NaN batch at step 10 ({where})')
    monkeypatch.undo()                                  # the fault passes: the run resumes from the last good checkpoint
    rc, out, err = run_main([*ARGS, *extra, '--workdir', tmp_path, '--resume'], capsys)
    assert rc == 0 and audit(tmp_path)['latest'] == 12, err

@pytest.mark.parametrize('lr', ['10', '1e6'])
def test_a_diverging_learning_rate_stops_training(lr, tmp_path, capsys):
    "No warm-up, no clipping, a huge step: the losses blow up within a few steps."
    rc, out, err = run_main([*ARGS, *sets(f'optim.lr={lr}', 'optim.warmup=0', 'optim.grad_clip=0', 'training.snapshot_freq=1'),
                             '--workdir', tmp_path], capsys)
    m = re.match(r'dinof: error: step (\d+): the (score|flow) ', err)
    ok = clean_error(rc, err, status=1) and m is not None
    count('numerical faults', ok, f'lr {lr}: status {rc}, {err.strip()[-200:]!r}')
    assert ok, (rc, err)
    step = int(m.group(1))
    a = audit(tmp_path)
    good = a['latest'] == step - 1 and max(a['steps']) == step - 1 and not a['bad'] and all(_finite(load_checkpoint(tmp_path / f'ckpt_{s:08d}.pt')) for s in a['steps'])
    lost(int(not good), f'lr {lr}: {a}')
    assert good, a

def test_a_learning_rate_beyond_its_bound_is_refused_at_validation(tmp_path, capsys):
    """optim.lr=1e38 used to pass validation; then Adam overflowed float32 (lr / (1 - beta1)) and dinof train printed a
    RuntimeError traceback ('value cannot be converted to type float without overflow'). OptimConfig.lr now has the
    upper bound 1e6: one line naming the field, status 2, before anything is written."""
    rc, out, err = run_main([*ARGS, *sets('optim.lr=1e38', 'optim.warmup=0', 'optim.grad_clip=0'), '--workdir', tmp_path / 'run'], capsys)
    ok = clean_error(rc, err, 'dinof: error: --set: optim.lr: ') and not (tmp_path / 'run').exists()
    count('bad inputs', ok, f'lr 1e38: status {rc}, {err.strip()[-200:]!r}')
    assert ok, (rc, err)

@pytest.mark.parametrize('fault', ['flow weights x 1e20', 'input x 1e30 (flow only)'])
def test_an_overflow_on_the_flow_under_bf16_stops_training(fault, tmp_path, capsys, monkeypatch):
    "bf16 autocast on the CPU; at step 6 the flow's weights are blown up (or its input pushed past bf16's range)."
    if fault.startswith('flow'):
        real = T.Trainer._step
        def step(self, s):
            if s == 6:
                with torch.no_grad():
                    for p in self.flow.parameters(): p.mul_(1e20)
            return real(self, s)
        monkeypatch.setattr(T.Trainer, '_step', step)
        extra = []
    else:
        real = T.Trainer._batch
        monkeypatch.setattr(T.Trainer, '_batch', lambda self, s, lo: real(self, s, lo) * (1e30 if s == 6 else 1.))
        extra = ['training.w_score=0']
    rc, out, err = run_main([*ARGS, *sets('training.autocast=bf16', *extra), '--workdir', tmp_path], capsys)
    _check_stop(tmp_path, rc, err, 6, ('flow',), f'bf16 overflow, {fault}')

# ---------------------------------------------------------------- the flow stays invertible
def _inverse_error(flow, x: torch.Tensor) -> tuple[float, float]:
    "max |decode(encode(x)) - x| and max |encode(decode(z)) - z| for z = encode(x), in float32."
    with torch.no_grad():
        z, _ = flow.encode(x)
        x2 = flow.decode(z)
        z2, _ = flow.encode(flow.decode(z))
    return (x2 - x).abs().max().item(), (z2 - z).abs().max().item()

def _x_tm(m, x0, seed=0):
    from dinof.losses import flow_input
    from dinof.core import scale_data
    L = T.DiNofLoss(m.sde, **m.config.loss_kwargs())
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return flow_input(m.sde, scale_data(x0, m.config.resolved().data.centered), z, L.t_m, L.continuous, L.faithful)

@pytest.mark.parametrize('autocast', ['off', 'bf16'])
def test_the_toy_flow_stays_invertible_after_training(autocast, tmp_path):
    torch.set_num_threads(1)
    cfg = get_config('toy2d', *TOY, f'training.autocast={autocast}', 'training.n_iters=60', 'training.snapshot_freq=60', 'optim.lr=3e-3')
    Trainer(cfg, tmp_path, progress=False).train()
    m = load_models(tmp_path / 'ckpt_00000060.pt')
    from dinof.data import Toy2D
    x = _x_tm(m, Toy2D('8gaussians').sample(4096, generator=torch.Generator().manual_seed(1)))
    ex, ez = _inverse_error(m.flow.float(), x.float())
    count('numerical faults', ex < 1e-4 and ez < 1e-4, f'toy flow inverse error after {autocast} training: {ex:.2e}, {ez:.2e}')
    assert ex < 1e-4 and ez < 1e-4, (ex, ez)

def test_a_small_glow_stays_invertible_after_bf16_training(tmp_path):
    "A 2-level Glow on 16 grey images, 6 bf16 steps at a high learning rate, then the inverse in float32."
    import numpy as np
    from PIL import Image
    torch.set_num_threads(1)
    (tmp_path / 'imgs').mkdir()
    g = np.random.default_rng(0)
    for i in range(16): Image.fromarray(g.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / 'imgs' / f'{i}.png')
    cfg = get_config('fmnist_small', 'data.dataset=image_folder', f'data.root={tmp_path / "imgs"}', 'model.nf=8', 'model.ch_mult=[1]',
                     'model.num_res_blocks=1', 'model.attn_resolutions=[]', 'flow.levels=2', 'flow.depth=2', 'flow.hidden=16',
                     'training.batch_size=8', 'training.n_iters=6', 'training.autocast=bf16', 'optim.lr=3e-3', 'optim.warmup=0')
    Trainer(cfg, tmp_path / 'run', progress=False).train()
    m = load_models(tmp_path / 'run' / 'ckpt_00000006.pt')
    from dinof.data import get_dataset
    ds = get_dataset(split='train', **cfg.dataset_kwargs())
    x = _x_tm(m, torch.stack([ds[i] for i in range(16)]))
    ex, ez = _inverse_error(m.flow.float(), x.float())
    count('numerical faults', ex < 1e-4 and ez < 1e-4, f'glow inverse error after bf16 training: {ex:.2e}, {ez:.2e}')
    assert ex < 1e-4 and ez < 1e-4, (ex, ez)
