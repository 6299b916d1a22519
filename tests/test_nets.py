"Checks of dinof.nets beyond the notebook: the score_sde fixture, the checkpoint loader on every option, parameter counts."
import itertools, json
from pathlib import Path
import pytest
import torch
from dinof.nets import NCSNpp, build, preset, presets, load_score_sde_checkpoint, from_score_sde_config

FX = Path(__file__).parent / 'fixtures' / 'score_sde'

@pytest.fixture
def two_threads():
    "The fixture was made with 2 threads; mkldnn's 1x1 convolutions sum in a thread-dependent order."
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)

def test_fixture_output(two_threads):
    net = load_score_sde_checkpoint(FX / 'checkpoint.pth', FX / 'config.json')
    inp, exp = torch.load(FX / 'input.pt'), torch.load(FX / 'expected.pt')['output']
    with torch.no_grad(): out = net(inp['x'], inp['labels'])
    assert (out - exp).abs().max().item() <= 1e-5
    assert not net.training

def test_fixture_without_prefix_and_raw_weights(tmp_path):
    ck = torch.load(FX / 'checkpoint.pth', weights_only=True)
    ck['model'] = {k[len('module.'):]: v for k, v in ck['model'].items()}
    torch.save(ck, tmp_path / 'ck.pth')
    cfg = json.loads((FX / 'config.json').read_text())
    a = load_score_sde_checkpoint(tmp_path / 'ck.pth', cfg, use_ema=False)
    b = load_score_sde_checkpoint(FX / 'checkpoint.pth', FX / 'config.json', use_ema=False)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()): assert torch.equal(v, w), k
    # the EMA replaces exactly the trainable parameters; the frozen Fourier W comes from the model
    e = load_score_sde_checkpoint(FX / 'checkpoint.pth', cfg)
    assert torch.equal(e.fourier.W, a.fourier.W)
    assert torch.equal(e.conv_in.weight, ck['ema']['shadow_params'][4])   # after temb_0 and temb_1 (weight, bias each)
    trained = [n for n, p in e.named_parameters() if p.requires_grad]
    assert len(trained) == len(ck['ema']['shadow_params'])

def _to_score_sde(net: NCSNpp, ema_shift: float = 0.) -> dict:
    "A checkpoint in score_sde's format made from our network (for the round trip of options the fixture lacks)."
    sd = net.state_dict()
    params = dict(net.named_parameters())
    model = {'module.' + o: sd[n].clone() for o, n in net.score_sde_keys()}
    shadow = [params[n].detach().clone() + ema_shift for o, n in net.score_sde_keys() if n in params and params[n].requires_grad]
    return {'model': model, 'ema': {'decay': 0.999, 'num_updates': 3, 'shadow_params': shadow}, 'step': 3}

ALL = list(itertools.product(('ddpm', 'biggan'), (False, True), ('none', 'output_skip', 'residual'),
                             ('none', 'input_skip', 'residual'), ('sum', 'cat')))
COVER = [('ddpm', False, 'none', 'none', 'sum'), ('ddpm', True, 'output_skip', 'input_skip', 'cat'),
         ('ddpm', False, 'residual', 'residual', 'sum'), ('biggan', True, 'residual', 'input_skip', 'sum'),
         ('biggan', False, 'output_skip', 'residual', 'cat'), ('biggan', True, 'none', 'residual', 'sum'),
         ('ddpm', True, 'residual', 'none', 'cat'), ('biggan', False, 'residual', 'input_skip', 'cat')]  # every value once or more
OPTIONS = [pytest.param(*o, marks=[] if o in COVER else [pytest.mark.slow]) for o in ALL]

@pytest.mark.parametrize('rb,fir,prog,pin,comb', OPTIONS)
def test_loader_round_trip_every_option(tmp_path, rb, fir, prog, pin, comb):
    cfg = dict(name='ncsnpp', nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resblock_type=rb, fir=fir,
               progressive=prog, progressive_input=pin, progressive_combine=comb, image_size=8, num_channels=1,
               dropout=0., embedding_type='positional', continuous=False, num_scales=20)
    torch.manual_seed(0)
    net = build(cfg)
    with torch.no_grad():
        for p in net.parameters(): p.add_(0.1 * torch.randn_like(p))
    torch.save(_to_score_sde(net, ema_shift=0.01), tmp_path / 'ck.pth')
    raw = load_score_sde_checkpoint(tmp_path / 'ck.pth', cfg, use_ema=False)
    ema = load_score_sde_checkpoint(tmp_path / 'ck.pth', cfg)
    x, t = torch.rand(2, 1, 8, 8), torch.tensor([0, 19])
    net.eval()
    with torch.no_grad():
        assert torch.equal(raw(x, t), net(x, t))
        for n, p in ema.named_parameters(): assert torch.allclose(p, dict(net.named_parameters())[n] + 0.01), n

def test_score_sde_keys_cover_state_dict():
    for name in presets():
        if preset(name)['name'] != 'ncsnpp': continue
        with torch.device('meta'): net = build(name)
        pairs = net.score_sde_keys()
        assert sorted(n for _, n in pairs) == sorted(net.state_dict())
        assert len({o for o, _ in pairs}) == len(pairs)

def test_official_key_layout():
    "Spot checks of score_sde's all_modules indices for the paper's CIFAR-10 VE network."
    with torch.device('meta'): net = build('ve_cifar10_ncsnpp_continuous')
    keys = dict(net.score_sde_keys())
    assert keys['all_modules.0.W'] == 'fourier.W'
    assert keys['all_modules.3.weight'] == 'conv_in.weight'
    assert keys['all_modules.4.GroupNorm_0.weight'] == 'down.0.res_0.GroupNorm_0.weight'
    assert keys['all_modules.8.Conv_2.weight'] == 'down.0.downsample.Conv_2.weight'   # 4 blocks, then the down block
    assert keys['all_modules.9.Conv2d_0.weight'] == 'down.0.pyramid.Conv2d_0.weight'
    n = len(net._score_sde_order)
    assert keys[f'all_modules.{n - 1}.weight'] == 'conv_out.weight'

PAPER = {'ve_cifar10_ncsnpp': 62_693_251, 've_cifar10_ncsnpp_continuous': 62_758_915,
         've_cifar10_ncsnpp_deep_continuous': 107_587_075, 'vp_cifar10_ddpmpp': 61_804_419,
         'vp_cifar10_ddpmpp_continuous': 61_804_419, 'subvp_cifar10_ddpmpp_continuous': 61_804_419,
         've_celebahq_256_ncsnpp_continuous': 65_574_549}

@pytest.mark.parametrize('name', list(PAPER))
def test_paper_parameter_counts_on_cpu(name):
    "Built for real (not on the meta device), as a user would."
    net = build(name)
    assert sum(p.numel() for p in net.parameters()) == PAPER[name]

def test_celebahq_forward_shape():
    with torch.device('meta'):
        net = build('ve_celebahq_256_ncsnpp_continuous')
        out = net(torch.empty(1, 3, 256, 256), torch.ones(1))
    assert out.shape == (1, 3, 256, 256)

def test_score_sde_config_errors():
    cfg = json.loads((FX / 'config.json').read_text())
    with pytest.raises(ValueError, match='model.name'):
        from_score_sde_config({**cfg, 'model': {**cfg['model'], 'name': 'ddpm'}})
    with pytest.raises(ValueError, match='missing model.nf'):
        from_score_sde_config({**cfg, 'model': {k: v for k, v in cfg['model'].items() if k != 'nf'}})
    with pytest.raises(ValueError, match='training'):
        from_score_sde_config({'data': cfg['data'], 'model': cfg['model']})
    with pytest.raises(FileNotFoundError, match='no such file'):
        load_score_sde_checkpoint(FX / 'checkpoint.pth', FX / 'missing.json')
