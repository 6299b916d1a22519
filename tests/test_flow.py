"Checks of dinof.flow beyond the notebook: the paper-sized Glow, normflows equivalence at CIFAR shapes, DDP."
import io, os, socket, warnings
import pytest, torch
import torch.multiprocessing as mp
from dinof.core import PerSampleGenerator
from dinof.flow import PRESETS, CouplingFlow, Glow, build, count_params, from_normflows, preset, std_normal_logp

def test_paper_glow_roundtrip_float32():
    torch.manual_seed(0)
    flow = build('glow_cifar10')
    x = (torch.rand(4, 3, 32, 32) * 2 - 1) * 0.8 + 0.3 * torch.randn(4, 3, 32, 32)   # like x(t_m) of centred data
    flow.initialize(x)
    with torch.no_grad():
        z, ld = flow.encode(x[:2])
        assert z.shape == (2, 3072) and torch.isfinite(ld).all()
        assert (flow.decode(z) - x[:2]).abs().max() < 1e-4
        # the latent of the initialised flow is roughly standardised (ActNorm's job)
        assert abs(z.std().item() - 1) < 0.5
        s = flow.sample(2, temperature=0.7, generator=PerSampleGenerator([1, 2]))
        assert s.shape == (2, 3, 32, 32) and torch.isfinite(s).all()
    assert count_params(flow) == 7_917_576

def _nf_glow(in_shape, L, K, hidden):
    import normflows as nf
    C, H, W = in_shape
    q0, merges, flows = [], [], []
    for i in range(L):
        flows.append([nf.flows.GlowBlock(C * 2 ** (L + 1 - i), hidden, split_mode='channel', scale=True) for _ in range(K)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            q0.append(nf.distributions.GlowBase((C * 2 ** (L - i), H // 2 ** (L - i), W // 2 ** (L - i))))
        else: q0.append(nf.distributions.GlowBase((C * 2 ** (L + 1), H // 2 ** L, W // 2 ** L)))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)

def test_normflows_equivalence_cifar_shapes():
    pytest.importorskip('normflows')
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        theirs = _nf_glow((3, 32, 32), 3, 2, 16).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        theirs.log_prob(x, None)                                   # normflows' lazy ActNorm initialisation
        for p in theirs.parameters(): p.add_(0.05 * torch.randn_like(p))
    ours = Glow(in_shape=(3, 32, 32), levels=3, depth=2, hidden=16).double()
    ours.load_state_dict(from_normflows(theirs.state_dict(), ours))
    with torch.no_grad():
        torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x, None), rtol=1e-10, atol=1e-8)
        # and sampling: normflows' latents in its level order, ours flat (coarsest first): same images
        zs = [torch.randn(2, *q.shape, dtype=torch.float64) for q in theirs.q0]
        xs = [None]
        for i, q in enumerate(theirs.q0):
            loc = q.loc * torch.exp(q.loc_logs * 3); ls = q.log_scale * torch.exp(q.log_scale_logs * 3)
            zs_i = loc + ls.exp() * zs[i]
            h = zs_i if i == 0 else theirs.merges[i - 1]([h, zs_i])[0]
            for f in theirs.flows[i]: h = f(h)[0]
        torch.testing.assert_close(ours.decode(torch.cat([z.flatten(1) for z in zs], 1)), h, rtol=1e-9, atol=1e-9)

def test_initialize_is_explicit_and_lazy_init_runs_once():
    flow = build('glow_tiny')
    a, b = torch.randn(16, 1, 8, 8), torch.randn(16, 1, 8, 8) * 5 + 3
    flow.encode(a)                                               # lazy init on a
    bias = flow.steps[0][0].actnorm.bias.detach().clone()
    flow.encode(b); assert torch.equal(flow.steps[0][0].actnorm.bias, bias)   # not re-run
    flow.initialize(b); assert not torch.equal(flow.steps[0][0].actnorm.bias, bias)   # explicit re-init

def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _ddp_worker(rank, world, port, q):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(rank)                                      # different random init per rank
    flow = build('glow_tiny')
    if rank == 0: flow.initialize(torch.randn(32, 1, 8, 8) * 2 + 1)
    ddp = DDP(flow)                                              # broadcasts rank 0's parameters and buffers
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(10 + rank)) * 3 - 2
    loss = -ddp(x).mean(); loss.backward()                       # forward == log_prob; must not re-init on rank 1
    an = flow.steps[0][0].actnorm
    q.put((rank, bool(an.initialized), an.bias.tolist(), an.logs.grad.tolist()))   # plain lists: no shared memory
    dist.destroy_process_group()

def test_ddp_actnorm_state_broadcast():
    ctx = mp.get_context('spawn'); q = ctx.Queue()
    mp.start_processes(_ddp_worker, args=(2, _free_port(), q), nprocs=2, join=True, start_method='spawn')
    r = dict((k, v) for k, *v in [q.get() for _ in range(2)])
    assert r[0][0] and r[1][0]
    assert r[0][1] == r[1][1]                                   # same ActNorm (rank 0's), not re-initialised on rank 1
    assert torch.allclose(torch.tensor(r[0][2]), torch.tensor(r[1][2]))   # gradients all-reduced

def test_autocast_bf16_log_prob_stays_float32():
    # mixed precision (as on a GPU with AMP; bfloat16 autocast runs on the CPU): log-densities accumulate in float32
    torch.manual_seed(0)
    flow = build('glow_fmnist_small')
    x = torch.randn(8, 1, 32, 32)
    flow.initialize(x)
    with torch.no_grad():
        ref = flow.log_prob(x)
        with torch.autocast('cpu', dtype=torch.bfloat16): lp = flow.log_prob(x)
    assert lp.dtype == torch.float32
    # bfloat16 keeps ~3 significant digits per activation; the per-image log-density (~ -1.4e3 nats) agrees to ~1%
    torch.testing.assert_close(lp, ref, rtol=0.02, atol=5.)

def test_glow_reaches_gaussian_entropy():
    # x = m + A eps on 1x4x4 images: a correlated Gaussian with entropy H = D/2 log(2 pi e) + log|det A|. A fitted Glow's
    # held-out NLL must come within 0.1 nats of H (0.006 nats/dim; Monte Carlo s.e. of the estimate ~0.02 nats).
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        D = 16
        A = torch.eye(D) + 0.4 * torch.randn(D, D, generator=g) / D ** 0.5
        m = torch.linspace(-1, 1, D)
        gauss = lambda n: (m + torch.randn(n, D, generator=g) @ A.T).view(n, 1, 4, 4)
        H = 0.5 * D * torch.log(torch.tensor(2 * torch.pi * torch.e)).item() + torch.linalg.slogdet(A)[1].item()
        torch.manual_seed(0)
        flow = Glow(in_shape=(1, 4, 4), levels=2, depth=4, hidden=32)
        flow.initialize(gauss(1024))
        opt = torch.optim.Adam(flow.parameters(), lr=2e-3)
        with torch.no_grad(): nll0 = -flow.log_prob(gauss(20_000)).mean().item()
        for _ in range(400):
            loss = -flow.log_prob(gauss(256)).mean(); opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad(): nll = -flow.log_prob(gauss(20_000)).mean().item()
    finally: torch.set_num_threads(threads)
    print(f'Glow on a Gaussian: held-out NLL {nll0:.3f} before, {nll:.3f} after training; entropy {H:.3f} nats')
    assert nll0 - H > 0.5                                        # the untrained flow is clearly off
    assert abs(nll - H) < 0.1, (nll, H)

def test_presets_builders_and_vocabulary():
    "PRESETS is a tuple of names; dicts are keyed on 'name'; every flow has in_shape and latent_dim (no dim attribute)."
    assert isinstance(PRESETS, tuple) and 'glow_celebahq_256' in PRESETS
    for name in PRESETS:
        p = preset(name)
        assert p['name'] in ('glow', 'coupling')
        with torch.device('meta'): f = build(name)
        assert f.latent_dim == int(torch.tensor(f.in_shape).prod()) and not hasattr(f, 'dim')
    assert build({'name': 'coupling', 'dim': 3}).in_shape == (3,)
    with pytest.raises(ValueError, match="^name: missing: flow dicts are keyed on 'name'"): build({'type': 'glow'})
    with pytest.raises(ValueError, match='^name: must be'): build({'name': 'realnvp'})
    with pytest.raises(ValueError, match='^checkpoint: must be True or False'): build(dict(preset('glow_tiny'), checkpoint='yes'))
    flow = build('glow_tiny').eval()
    with pytest.raises(TypeError, match='positional'): flow.sample(2, 1., torch.Generator())
    with pytest.raises(TypeError, match='positional'): CouplingFlow().sample(2, 1., torch.Generator())

def test_checkpointed_training_is_the_same_training():
    "Three Adam steps of a Glow with activation checkpointing follow the same trajectory as without (float64, CIFAR shapes)."
    torch.manual_seed(0)
    a = Glow(in_shape=(3, 16, 16), levels=3, depth=2, hidden=16).double()
    b = Glow(in_shape=(3, 16, 16), levels=3, depth=2, hidden=16, checkpoint=True).double()
    b.load_state_dict(a.state_dict())
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64) * 0.5 for _ in range(3)]
    oa, ob = torch.optim.Adam(a.parameters(), lr=1e-3), torch.optim.Adam(b.parameters(), lr=1e-3)
    for x in xs:                                                    # the first step initialises the ActNorms (not checkpointed)
        for f, o in ((a, oa), (b, ob)):
            o.zero_grad(); (-f(x).mean()).backward(); o.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()): torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=n)

def test_checkpoint_under_autocast():
    "bfloat16 autocast: the recomputed activations are the autocast ones (checkpoint restores the autocast state)."
    torch.manual_seed(0)
    a = build('glow_tiny'); b = build(dict(preset('glow_tiny'), checkpoint=True))
    x = torch.randn(16, 1, 8, 8)
    a.initialize(x); b.load_state_dict(a.state_dict())
    grads = []
    for f in (a, b):
        with torch.autocast('cpu', dtype=torch.bfloat16): lp = f(x)
        lp.sum().backward(); grads.append([p.grad for p in f.parameters()])
    for ga, gb in zip(*grads): torch.testing.assert_close(gb, ga, rtol=0, atol=0)
