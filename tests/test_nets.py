"Checks of dinof.nets beyond the notebook: the score_sde fixture, the checkpoint loader on every option, parameter counts."
import itertools, json, os, re
import numpy as np
from pathlib import Path
import pytest
import torch
from dinof.nets import NCSNpp, PRESETS, ScoreModel, build, preset, load_score_sde_checkpoint, from_score_sde_config
from dinof.sde import VESDE, VPSDE

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
    assert (out - exp).abs().max().item() <= 1e-4   # outputs up to 49; builds of PyTorch round ~1e-6 relative apart (see 03_nets)
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
    for name in PRESETS:
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

# --- score_sde's own parameter layout, recorded from its code for 448 option sets (fixtures/score_sde/keys.json) ---
KEYS = Path(os.environ.get('DINOF_SCORE_SDE_KEYS', FX / 'keys.json'))
needs_keys = pytest.mark.skipif(not KEYS.is_file(), reason=f'{KEYS} missing (copy shared/fixtures/score_sde/keys.json there)')

def _keys():
    d = json.loads(KEYS.read_text())
    common = {k: v for k, v in d['common'].items() if k != 'sde'}   # 'sde': 'vesde', the SDE the layouts were built for
    return common, d['cases']

def _our_layout(net: NCSNpp) -> dict:
    sd = net.state_dict()
    return {o: list(sd[n].shape) for o, n in net.score_sde_keys()}

@needs_keys
def test_score_sde_layout_every_option_set():
    "Every option set: the same state_dict names (score_sde naming, through score_sde_keys) and shapes as the original."
    common, cases = _keys()
    assert len(cases) == 448
    bad = []
    for c in cases:
        net = NCSNpp(**common, **c['options'])          # (the meta device is slower here: it is all Python overhead)
        theirs = {k: s for k, s in c['state_dict']}
        ours = _our_layout(net)
        if ours != theirs:
            bad.append((c['options'], sorted(set(theirs) - set(ours))[:4], sorted(set(ours) - set(theirs))[:4],
                        sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])[:4]))
        elif sum(p.numel() for p in net.parameters()) != c['n_params']: bad.append((c['options'], 'n_params'))
    assert not bad, f'{len(bad)} of 448 option sets differ from score_sde; first: {bad[0]}'

def _score_sde_checkpoint_from_layout(layout: list, sigmas: torch.Tensor, g: torch.Generator) -> tuple[dict, dict]:
    """A checkpoint in score_sde's own format made from a recorded layout (random values): DataParallel keys, the EMA as a
    list in parameter order, an Adam state, the step. Also returns {original key: EMA tensor}."""
    model = {'module.' + k: (sigmas.clone() if k == 'sigmas' else torch.randn(s, generator=g)) for k, s in layout}
    # parameters with requires_grad, in order: all but the `sigmas` buffer and the frozen Fourier W (all_modules.0.W)
    trained = [k for k, _ in layout if k not in ('sigmas', 'all_modules.0.W')]
    shadow = [model['module.' + k] + 0.5 for k in trained]
    optimizer = {'state': {i: {'step': torch.tensor(7.), 'exp_avg': torch.zeros_like(s), 'exp_avg_sq': torch.zeros_like(s)}
                           for i, s in enumerate(shadow)},
                 'param_groups': [{'lr': 2e-4, 'betas': (0.9, 0.999), 'eps': 1e-8, 'weight_decay': 0, 'amsgrad': False,
                                   'params': list(range(len(shadow)))}]}
    ck = {'optimizer': optimizer, 'model': model, 'ema': {'decay': 0.999, 'num_updates': 7, 'shadow_params': shadow}, 'step': 7}
    return ck, dict(zip(trained, shadow))

def _input_skip_cat_cases():
    common, cases = _keys()
    return common, [c for c in cases if c['options']['progressive_input'] == 'input_skip' and c['options']['progressive_combine'] == 'cat']

def _cover(cases):
    "A few cases that together take every value of every option (greedy)."
    todo = {(k, v) for c in cases for k, v in c['options'].items()}
    out = []
    while todo:
        best = max(cases, key=lambda c: len(todo & set(c['options'].items())))
        out.append(best); todo -= set(best['options'].items())
    return out

def _check_input_skip_cat_loads(tmp_path, common, cases):
    sigmas = torch.tensor(np.exp(np.linspace(np.log(50.), np.log(0.01), 1000)))   # VE, sigma_min 0.01, sigma_max 50
    g = torch.Generator().manual_seed(0)
    for c in cases:
        ck, ema_of = _score_sde_checkpoint_from_layout(c['state_dict'], sigmas, g)
        torch.save(ck, tmp_path / 'checkpoint_7.pth')
        cfg = {'name': 'ncsnpp', **common, **c['options']}
        raw = load_score_sde_checkpoint(tmp_path / 'checkpoint_7.pth', cfg, use_ema=False).state_dict()
        ema = load_score_sde_checkpoint(tmp_path / 'checkpoint_7.pth', cfg)
        sd = ema.state_dict()
        for o, n in ema.score_sde_keys():
            assert torch.equal(raw[n], ck['model']['module.' + o]), (c['options'], o)
            assert torch.equal(sd[n], ema_of.get(o, ck['model']['module.' + o])), (c['options'], o)
        assert 'down.0.combine.Conv_0.weight' in sd

@needs_keys
def test_load_score_sde_checkpoint_input_skip_cat(tmp_path):
    "progressive_input='input_skip' with 'cat' (score_sde's Combine names its conv Conv_0): strict load of raw and EMA weights."
    common, cases = _input_skip_cat_cases()
    assert len(cases) == 96
    _check_input_skip_cat_loads(tmp_path, common, _cover(cases))     # 3 option sets that take every option value

@needs_keys
@pytest.mark.slow
def test_load_score_sde_checkpoint_input_skip_cat_all(tmp_path):
    _check_input_skip_cat_loads(tmp_path, *_input_skip_cat_cases())

# --- unreadable checkpoint files: one ValueError naming the file ---
def _garbage(kind: str, path: Path):
    if kind == 'random bytes': path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == 'truncated': path.write_bytes((FX / 'checkpoint.pth').read_bytes()[:1_000_000])
    elif kind == 'text': path.write_text('step: 1234\nthis is not a checkpoint\n')
    elif kind == 'empty': path.write_bytes(b'')
    elif kind == 'a tensor': torch.save(torch.zeros(3), path)
    elif kind == 'model not a dict': torch.save({'model': [torch.zeros(3)], 'ema': {}}, path)
    elif kind == 'ema without shadow_params':
        ck = torch.load(FX / 'checkpoint.pth', weights_only=True); ck['ema'] = {'decay': 0.999}; torch.save(ck, path)

@pytest.mark.parametrize('kind', ['random bytes', 'truncated', 'text', 'empty', 'a tensor', 'model not a dict', 'ema without shadow_params'])
def test_garbage_checkpoint_is_one_value_error(tmp_path, kind):
    path = tmp_path / 'checkpoint_1.pth'
    _garbage(kind, path)
    with pytest.raises(ValueError, match=f"^path: '{re.escape(str(path))}'") as e:
        load_score_sde_checkpoint(path, FX / 'config.json')
    assert e.value.__suppress_context__ or e.value.__context__ is None    # no internal traceback attached

# --- ScoreModel: the SDE a network is made for; labels= through DDP's forward ---
def test_score_model_refuses_ve_network_with_vp_sde():
    with torch.device('meta'):
        ve_net, vp_net = build('ncsnpp_small_28'), build('ddpmpp_small_28')
    with pytest.raises(ValueError, match=r'^sde: this ncsnpp network is made for a VESDE \(scale_by_sigma=True .*\), not a VPSDE$'):
        ScoreModel(ve_net, VPSDE())
    with pytest.raises(ValueError, match='made for a VPSDE or SubVPSDE .* not a VESDE'):
        ScoreModel(vp_net, VESDE())
    ScoreModel(ve_net, VESDE()); ScoreModel(vp_net, VPSDE())

def test_score_model_labels_through_ddp(tmp_path):
    "DDP(ScoreModel)(x, labels=k) is the raw network output, (x, t) the score; both through DDP's forward (world of one)."
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        sm = ScoreModel(build(dict(name='mlp', dim=2, hidden=16, depth=1, embed_dim=8)), VPSDE(), continuous=False)
        ddp = DDP(sm)
        x, k, t = torch.randn(5, 2), torch.tensor([0, 10, 200, 599, 999]), torch.tensor([0.01, 0.2, 0.5, 0.8, 1.])
        assert torch.equal(ddp(x, labels=k), sm.net(x, k))
        assert torch.equal(ddp(x, t), sm(x, t))
        assert torch.allclose(ddp(x, t), -sm.net(x, t * 999) / sm.std(t).float()[:, None])
        ddp(x, labels=k).square().sum().backward()
        assert all(p.grad is not None for p in sm.parameters())
        with pytest.raises(ValueError, match='exactly one of t'): ddp(x, t, labels=k)
        with pytest.raises(ValueError, match='exactly one of t'): ddp(x)
    finally: dist.destroy_process_group()
