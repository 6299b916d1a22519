"dinof.config against the builders it feeds (dinof.nets.build, dinof.flow.build, dinof.sampling.hybrid_sample) and the paper's parameter counts."
import inspect, json, typing
import pytest
import torch
from dinof.config import PAPER_PRESETS, PRESETS, SECTIONS, Config, get_config

nets = pytest.importorskip('dinof.nets')
flow = pytest.importorskip('dinof.flow')
sampling = pytest.importorskip('dinof.sampling')

# parameter counts of the original implementation (shared/fixtures/score_sde/README.md)
PAPER_PARAMS = {'ve_cifar10_ncsnpp': 62_693_251, 've_cifar10_ncsnpp_continuous': 62_758_915,
                've_cifar10_ncsnpp_deep_continuous': 107_587_075, 'vp_cifar10_ddpmpp': 61_804_419,
                'vp_cifar10_ddpmpp_continuous': 61_804_419, 'subvp_cifar10_ddpmpp_continuous': 61_804_419,
                've_celebahq_256_ncsnpp_continuous': 65_574_549}

@pytest.mark.parametrize('name', PAPER_PRESETS)
def test_model_dict_agrees_with_the_nets_preset(name):
    ours, theirs = get_config(name).model_dict(), {'patch': 1, **nets.preset(name)}   # score_sde's networks are unpatched
    norm = lambda d: {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    ours, theirs = norm(ours), norm(theirs)
    assert set(ours) == set(theirs)
    diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    # the DiNof code's CelebA-HQ base keeps 1000 scales and dropout 0.1 (score_sde's LSUN base: 2000, 0.)
    allowed = {'num_scales', 'dropout'} if 'celebahq' in name else set()
    assert set(diff) <= allowed, diff

def test_paper_flow_parameter_count():
    f = flow.build(get_config('vp_cifar10_ddpmpp_continuous').flow_dict())
    assert sum(p.numel() for p in f.parameters()) == 7_917_576

@pytest.mark.parametrize('name', ['toy2d', 'fmnist_small'])
def test_cpu_presets_build_and_run(name):
    cfg = get_config(name)
    net, fl = nets.build(cfg.model_dict()), flow.build(cfg.flow_dict())
    x = torch.rand(4, *cfg.data_shape)
    labels = torch.rand(4) * 999
    assert net(x, labels).shape == x.shape
    assert fl.log_prob(x).shape == (4,)
    # the JSON round trip builds the same network
    cfg2 = Config.from_json(cfg.to_json())
    assert sum(p.numel() for p in nets.build(cfg2.model_dict()).parameters()) == sum(p.numel() for p in net.parameters())

@pytest.mark.slow
@pytest.mark.parametrize('name', PAPER_PRESETS)
def test_paper_network_parameter_counts(name):
    with torch.device('meta'):
        net = nets.build(get_config(name).model_dict())
    assert sum(p.numel() for p in net.parameters()) == PAPER_PARAMS[name]

def test_every_preset_json_file_round_trip(tmp_path):
    for name in PRESETS:
        cfg = get_config(name)
        cfg.to_json(tmp_path / f'{name}.json')
        back = get_config(str(tmp_path / f'{name}.json'))
        assert back == cfg and json.loads((tmp_path / f'{name}.json').read_text()) == cfg.to_dict()

@pytest.mark.parametrize('name', PRESETS)
def test_sampling_kwargs_are_hybrid_sample_arguments(name):
    kw = get_config(name).sampling_kwargs()
    inspect.signature(sampling.hybrid_sample).bind(None, None, None, 8, **kw)   # prior, sde, score_fn, n
    assert kw['predictor'] in sampling.PREDICTORS and kw['corrector'] in sampling.CORRECTORS

def test_the_flow_of_the_celebahq_preset_checkpoints_its_steps():
    with torch.device('meta'):
        f = flow.build(get_config('ve_celebahq_256_ncsnpp_continuous').flow_dict())
    assert f.checkpoint is True and f.in_shape == (3, 256, 256)

@pytest.mark.parametrize('swap', [('ve_cifar10_ncsnpp_continuous', 'vpsde', 'vp_cifar10_ddpmpp_continuous'),
                                  ('vp_cifar10_ddpmpp_continuous', 'subvpsde', 'subvp_cifar10_ddpmpp_continuous'),
                                  ('vp_cifar10_ddpmpp', 'vesde', 've_cifar10_ncsnpp')])
def test_an_sde_override_through_json_builds_the_other_presets_networks(swap, tmp_path):
    src, sde, dst = swap
    get_config(src).to_json(tmp_path / 'c.json')
    cfg = get_config(str(tmp_path / 'c.json'), f'sde.type={sde}')
    assert cfg.model_dict() == get_config(dst).model_dict() and cfg.loss_kwargs() == get_config(dst).loss_kwargs()
    assert cfg.sampling_kwargs() == get_config(dst).sampling_kwargs()

def test_section_annotations_evaluate():
    # `int | None` annotations are strings (`from __future__ import annotations`); get_type_hints evaluates them,
    # which needs Python >= 3.10
    for cls in SECTIONS.values():
        for name, hint in typing.get_type_hints(cls).items():
            base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            assert len(base) == 1 and base[0] in (bool, int, float, str, tuple), (cls.__name__, name, hint)
    assert typing.get_type_hints(SECTIONS['data'])['root'] == typing.Optional[str]

@pytest.mark.parametrize('name', PAPER_PRESETS)
def test_paper_presets_train_in_float32_with_the_joint_clip(name):
    # issue 21: neither score_sde nor DiNof trained in bf16; the joint clip is the original code's (per network: an option)
    c = get_config(name)
    assert (c.training.autocast, c.optim.clip) == ('off', 'joint')
    assert get_config(name, 'optim.clip=per_network').optim.clip == 'per_network'
    with pytest.raises(ValueError, match=r"^optim\.clip: must be one of 'joint', 'per_network'"): get_config(name, 'optim.clip=score')
