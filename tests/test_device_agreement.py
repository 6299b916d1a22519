"tools/device_agreement.py: re-draws a study cell's kept samples and compares them pixel by pixel."
import importlib.util, json
from pathlib import Path

import numpy as np

from dinof.bench import export_models, generate, quickstart
from dinof.train import find_checkpoint, load_models

ROOT = Path(__file__).resolve().parent.parent
TINY = ('model.nf=8', 'model.ch_mult=[1,2]', 'model.attn_resolutions=[]', 'flow.depth=1', 'flow.hidden=8', 'training.batch_size=16',
        'sampling.method=dpm1', 'sampling.steps=2', 'sampling.batch_size=8', 'training.log_freq=1')


def _tool():
    spec = importlib.util.spec_from_file_location('device_agreement', ROOT / 'tools' / 'device_agreement.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_a_cell_redrawn_on_the_same_device_matches_and_a_changed_one_does_not(tmp_path):
    quickstart(tmp_path / 'qs', steps=1, n_samples=2, progress=False, device='cpu', overrides=TINY)
    m = load_models(find_checkpoint(tmp_path / 'qs'), device='cpu')
    root = tmp_path / 'study'
    export_models(m, root / 'models' / 'dinof.pt', 'tiny')
    x, nfe = generate(m, 6, seed=2, batch_size=4, prior='flow', method='pc', steps=3, schedule='uniform')
    cell = root / 'points' / 'dinof' / 'grid-pc-uniform-nfe3-n6-seed2'
    cell.parent.mkdir(parents=True)
    cell.with_suffix('.json').write_text(json.dumps({'model': 'dinof', 'seed': 2, 'prior': 'flow', 'method': 'pc', 'steps': 3,
                                                     'schedule': 'uniform', 'sampler_settings': {}, 'compiled': False, 'n': 6}))
    np.savez_compressed(cell.with_suffix('.npz'), samples=x[:, 0].numpy())
    out = tmp_path / 'a.json'
    assert _tool().main(['--root', str(root), '--device', 'cpu', '--batch-size', '5', '--out', str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row['identical_pixels'] == 1.0 and row['max_abs_diff'] == 0 and row['n_compared'] == 6 and row['nfe'] == nfe
    s = x[:, 0].numpy().copy(); s[0, :4] = 255 - s[0, :4]   # four rows of one image changed: 112 of 4,704 pixels
    np.savez_compressed(cell.with_suffix('.npz'), samples=s)
    _tool().main(['--root', str(root), '--device', 'cpu', '--out', str(out)])
    (row,) = json.loads(out.read_text())
    changed = float((s != x[:, 0].numpy()).mean())
    assert abs(row['identical_pixels'] - (1 - changed)) < 1e-6 and row['max_abs_diff'] > 1, row


def _oracle():
    spec = importlib.util.spec_from_file_location('oracle_prior', ROOT / 'tools' / 'oracle_prior.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_the_data_prior_draws_the_forward_marginal_exactly():
    "tools/oracle_prior.py: x(t_m) = alpha(t_m) x0 + sigma(t_m) z, row i from sample seed i (closed form, same noise)."
    import torch
    from dinof.core import PerSampleGenerator, randn
    from dinof.sampling import sample_seeds
    from dinof.sde import VPSDE
    sde, t = VPSDE(), 0.6
    x0 = torch.linspace(-1, 1, 5 * 4).reshape(5, 1, 2, 2)
    p = _oracle().DataPrior(x0, sde, t)
    assert p.t_m == t and p.shape == (1, 2, 2)
    got = p.sample(5, generator=PerSampleGenerator(sample_seeds(3, 5, 0)))
    z = randn((5, 1, 2, 2), generator=PerSampleGenerator(sample_seeds(3, 5, 0)))
    log_mean = -0.25 * t ** 2 * (sde.beta_1 - sde.beta_0) - 0.5 * t * sde.beta_0     # score_sde's VP marginal
    alpha = np.exp(log_mean); sigma = np.sqrt(1 - np.exp(2 * log_mean))
    assert torch.allclose(got, alpha * x0 + sigma * z, atol=1e-6)
    assert torch.equal(p.sample(3, generator=PerSampleGenerator(sample_seeds(3, 3, 0))), got[:3])   # a prefix draws the same rows


def test_a_cell_without_kept_samples_is_redrawn_whole_and_scored(tmp_path):
    "`--redraw MODEL/CELL`: a PC cell (fresh noise at every step) that kept no samples, drawn again whole: the same FID on the same device."
    from dinof.bench import domain_scores
    quickstart(tmp_path / 'qs', steps=1, n_samples=2, progress=False, device='cpu', overrides=TINY)
    m = load_models(find_checkpoint(tmp_path / 'qs'), device='cpu')
    root = tmp_path / 'study'
    export_models(m, root / 'models' / 'dinof.pt', 'tiny')
    x, nfe = generate(m, 8, seed=1, batch_size=8, prior='flow', method='pc', steps=3, schedule='uniform')
    s = domain_scores(x)
    cell = root / 'points' / 'dinof' / 'grid-pc-uniform-nfe3-n8-seed1.json'
    cell.parent.mkdir(parents=True)
    cell.write_text(json.dumps({'model': 'dinof', 'seed': 1, 'prior': 'flow', 'method': 'pc', 'steps': 3, 'schedule': 'uniform',
                                'sampler_settings': {}, 'compiled': False, 'n': 8, 'fid': s['fid'], 'kid': s['kid'], 'device': 'cuda'}))
    out = tmp_path / 'a.json'
    assert _tool().main(['--root', str(root), '--device', 'cpu', '--batch-size', '3', '--redraw', 'dinof/grid-pc-uniform-nfe3-n8-seed1',
                         '--out', str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert (row['method'], row['n'], row['nfe'], row['n_compared'], row['device_then']) == ('pc', 8, nfe, 0, 'cuda')
    assert abs(row['fid_now'] - row['fid_then']) < 1e-3, row
