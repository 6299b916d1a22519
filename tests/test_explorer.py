"""The committed Fashion-MNIST models (`bench/fashion_mnist/models`, written by `dinof bench quality`): they load, they sample
clothing-like images without retraining, and the explorer drives them headlessly."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dinof.bench import load_exported
from dinof.data import get_dataset
from dinof.explorer import GAUSSIAN, JOINT, SEPARATE, Explorer, draw, load_sources

MODELS = Path(__file__).resolve().parents[1] / 'bench' / 'fashion_mnist' / 'models'


def _dark_fraction(images: torch.Tensor) -> float:
    "Share of pixels below 10/255: Fashion-MNIST's black background covers about half of each image."
    return float((images < 10).float().mean())


def test_the_committed_models_are_there_and_small():
    files = {f.name: f.stat().st_size for f in MODELS.glob('*.pt')}
    assert {'baseline.pt', 'dinof.pt'} <= set(files), files
    assert sum(files.values()) < 20e6, files


@pytest.mark.parametrize('name,prior', [('baseline.pt', 'gaussian'), ('dinof.pt', 'flow')])
def test_the_committed_models_sample_clothing_like_images(name, prior):
    m = load_exported(MODELS / name, device='cpu')
    assert m.step >= 1000 and m.config.data.dataset == 'fashion_mnist'
    d = draw(m, prior, nfe=20, method='dpm2', n=16, seed=0)
    x = d['images']
    assert x.dtype == torch.uint8 and x.shape == (16, 1, 28, 28) and d['nfe'] <= 20
    real = get_dataset('fashion_mnist', split='test', image_size=28).data[:1000]
    noise = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    # a trained model draws dark backgrounds with bright objects, like the data; noise (or a broken model) does not
    assert abs(_dark_fraction(x) - _dark_fraction(real)) < 0.2, (_dark_fraction(x), _dark_fraction(real))
    assert abs(_dark_fraction(noise) - _dark_fraction(real)) > 0.3
    assert x.float().std() > 40 and x.max() > 200
    assert torch.equal(draw(m, prior, nfe=20, method='dpm2', n=16, seed=0)['images'], x)   # reproducible


def test_the_explorer_over_the_committed_models_redraws_on_every_change():
    src = load_sources(MODELS, device='cpu')
    assert {GAUSSIAN, JOINT} <= set(src)
    ex = Explorer(src, n=4, nfe=10, method='dpm2')
    assert ex.prior.value == JOINT and abs(ex.t_m.value - 0.6) < 1e-6
    pictures = [ex.image.value]
    for widget, value in ((ex.seed, 3), (ex.temperature, 0.8), (ex.nfe, 20), (ex.method, 'heun'), (ex.prior, GAUSSIAN)):
        widget.value = value
        assert ex.image.value != pictures[-1], widget.description
        pictures.append(ex.image.value)
    assert len(ex.draws) == 6 and ex.draws[-1]['prior'] == GAUSSIAN and ex.draws[-1]['t_m'] == 1.0
    assert f"NFE {ex.draws[-1]['nfe']}" in ex.info.value
    if SEPARATE in src:   # the t_m sweep's flows, once the study has trained them
        ex.prior.value = SEPARATE
        tms = [v for _, v in ex.t_m.options]
        assert len(tms) >= 2 and tms == sorted(tms)
        ex.t_m.value = tms[0]
        assert ex.draws[-1]['t_m'] == tms[0] and ex.draws[-1]['prior'] == SEPARATE


@pytest.mark.parametrize('method', ['dpm2', 'heun', 'pc'])
def test_draw_samples_on_the_methods_default_schedule(method):
    "Issue 21 item 5: the exported models carry `sampling.schedule='uniform'`; `draw` (and the front page's grids) use the method's default."
    from dinof.bench import generate, steps_for_nfe
    from dinof.sampling import DEFAULT_SCHEDULES
    m = load_exported(MODELS / 'baseline.pt', device='cpu')
    assert m.config.sampling.schedule == 'uniform'
    schedule = DEFAULT_SCHEDULES.get(method, 'uniform')
    d = draw(m, 'gaussian', nfe=10, method=method, n=3, seed=1)
    steps, _ = steps_for_nfe(m, 'gaussian', method, 10)
    want, nfe = generate(m, 3, seed=1, prior='gaussian', method=method, steps=steps, schedule=schedule, batch_size=3)
    assert torch.equal(d['images'], want) and (d['nfe'], d['schedule'], d['steps']) == (nfe, schedule, steps)
    if method != 'pc':   # on the uniform grid it is another picture
        other, _ = generate(m, 3, seed=1, prior='gaussian', method=method, steps=steps, schedule='uniform', batch_size=3)
        assert not torch.equal(other, want)


def test_the_explorer_quotes_the_stored_schedule_cells():
    "The figures 14_explorer gives for DPM-Solver-2 at NFE 19 on each grid are the committed cells'."
    pts = MODELS.parent / 'points'
    fid = {(m, s): json.loads((pts / m / f'grid-dpm2-{s}-nfe20-n2000-seed0.json').read_text())['fid'] for m in ('baseline', 'dinof') for s in ('uniform', 'logsnr')}
    nb = json.loads((MODELS.parents[2] / 'nbs' / '14_explorer.ipynb').read_text())
    text = ' '.join(' '.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown').split())
    assert (f"({fid['baseline', 'uniform']:.1f} against {fid['baseline', 'logsnr']:.1f} for the baseline, "
            f"{fid['dinof', 'uniform']:.1f} against {fid['dinof', 'logsnr']:.1f} for DiNof)") in text
