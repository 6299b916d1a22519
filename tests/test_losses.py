"dinof.losses with the package's own flows and score models (API contracts of dinof.flow and dinof.nets), and under DDP."
import math
import pytest
import torch
from dinof.core import PerSampleGenerator, bcast
from dinof.sde import VESDE, VPSDE, SubVPSDE
from dinof.losses import DiNofLoss, flow_input, flow_nll, sample_times

flow_mod = pytest.importorskip('dinof.flow')
nets = pytest.importorskip('dinof.nets')

class TinyScore(torch.nn.Module):
    "A conv as the score; `labels=` gives the same conv as the raw output (the `ScoreModel` contract)."
    def __init__(self, c): super().__init__(); self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
    def forward(self, x, t=None, *, labels=None): return self.conv(x) * bcast(1 + (t if labels is None else labels / 1000).float(), x)

@pytest.mark.parametrize('sde,continuous', [(VPSDE(), True), (SubVPSDE(), True), (VESDE(), True), (VPSDE(), False), (VESDE(), False)])
def test_dinof_loss_with_glow(sde, continuous):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    flow = flow_mod.Glow(in_shape=(1, 8, 8), levels=1, depth=1, hidden=8)
    net = TinyScore(1)
    z = torch.randn_like(x)
    out = DiNofLoss(sde, 0.6, continuous=continuous)(x, net, flow, z=z, generator=torch.Generator().manual_seed(1))
    x_tm = flow_input(sde, x, z, 0.6, continuous)
    assert torch.allclose(out.flow_nll, -flow.log_prob(x_tm).mean(), rtol=1e-5, atol=1e-4)
    assert torch.equal(flow_nll(flow, x_tm), -flow.log_prob(x_tm))
    assert math.isclose(out.flow_bpd.item(), out.flow_nll.item() / (64 * math.log(2)), rel_tol=1e-6)
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())

def test_flow_alone_on_a_frozen_score_net():
    x = torch.randn(16, 2)
    flow = flow_mod.CouplingFlow(dim=2, depth=2, hidden=8)
    score = torch.nn.Linear(2, 2)
    out = DiNofLoss(VPSDE(), 0.6, w_score=0.)(x, lambda x, t: score(x), flow, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.score_loss is None and out.t is None and all(p.grad is None for p in score.parameters())
    assert torch.allclose(out.loss.detach(), out.flow_nll)

def test_times_never_exceed_t_m_in_float32():
    for sde in (VPSDE(), VESDE()):
        for faithful in (False, True):
            t = sample_times(sde, 1_000_000, t_m=0.6, faithful=faithful, generator=torch.Generator().manual_seed(0))
            assert t.dtype == torch.float32 and t.max() <= 0.6

@pytest.mark.parametrize('sde', [VPSDE(), VESDE()])
def test_discrete_losses_use_the_raw_output_of_a_score_model(sde):
    from dinof.losses import ddpm_loss, smld_loss
    net = nets.build(dict(name='mlp', dim=2, hidden=16, depth=1, embedding_type='positional', embed_dim=8))
    model = nets.ScoreModel(net, sde, continuous=False)
    x, z, k = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 600, (8,)) + (400 if isinstance(sde, VESDE) else 0)
    fn = ddpm_loss if isinstance(sde, VPSDE) else smld_loss
    if isinstance(sde, VPSDE):
        a, s = sde.sqrt_alphas_cumprod[k].float()[:, None], sde.sqrt_1m_alphas_cumprod[k].float()[:, None]
        want = ((net(a * x + s * z, k) - z) ** 2).mean(1)
    else:
        s = sde.discrete_sigmas.flip(0)[k].float()[:, None]
        want = ((net(x + s * z, k) + z / s) ** 2).sum(1) * 0.5 * s[:, 0] ** 2
    assert torch.allclose(fn(model, sde, x, k, z), want, rtol=1e-5, atol=1e-6)

def test_continuous_loss_with_a_score_model_trains():
    torch.manual_seed(0)
    sde = VPSDE()
    model = nets.ScoreModel(nets.build(dict(name='mlp', dim=2, hidden=32, depth=2, embedding_type='positional', embed_dim=16)), sde)
    fl = flow_mod.CouplingFlow(dim=2, depth=2, hidden=16)
    obj = DiNofLoss(sde, 0.6)
    opt = torch.optim.Adam(list(model.parameters()) + list(fl.parameters()), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x_eval = torch.randn(2048, 2, generator=torch.Generator().manual_seed(1)) * 0.5 + 1
    ev = lambda: obj(x_eval, model, fl, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(): before = ev()
    for _ in range(60):
        x = torch.randn(256, 2, generator=g) * 0.5 + 1
        opt.zero_grad(); obj(x, model, fl, generator=g).loss.backward(); opt.step()
    with torch.no_grad(): after = ev()
    assert after.score_loss < 0.5 * before.score_loss
    # x(t_m) of N(1, 0.25 I) data is Gaussian: the flow's NLL must be near its entropy (the flow starts near it, ActNorm)
    a, s = (c.item() for c in sde.marginal_coeffs(torch.tensor([0.6])))
    entropy = math.log(2 * math.pi * math.e * (a * a * 0.25 + s * s))
    assert abs(after.flow_nll.item() - entropy) < 0.05

# ---- DistributedDataParallel: one and two processes in a real gloo process group ----
# kind: (SDE, continuous); the two discrete kinds call score_model(x, labels=k) through DDP's forward
DDP_KINDS = {'vp': (VPSDE, True), 've': (VESDE, True), 'ddpm': (VPSDE, False), 'smld': (VESDE, False)}
DDP_BATCH = 8

def _ddp_case(kind):
    "The same tiny score model, flow (ActNorm initialised on the global batch, as a trainer must do before wrapping), batch and per-sample seeds in every process."
    sde_cls, continuous = DDP_KINDS[kind]
    sde = sde_cls()
    torch.manual_seed(0)
    net = nets.build(dict(name='mlp', dim=2, hidden=16, depth=1, embedding_type='positional', embed_dim=8))
    model = nets.ScoreModel(net, sde, continuous=continuous)
    fl = flow_mod.CouplingFlow(dim=2, depth=2, hidden=8)
    x = torch.randn(DDP_BATCH, 2, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.3
    fl.initialize(flow_input(sde, x, torch.randn(x.shape, generator=torch.Generator().manual_seed(2)), 0.6, continuous))
    return DiNofLoss(sde, 0.6, continuous), model, fl, x, list(range(100, 100 + DDP_BATCH))

def _grads(model, fl): return [p.grad.clone() for p in (*model.parameters(), *fl.parameters())]

def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    if world > 1: torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        res = {}
        for kind in DDP_KINDS:
            obj, model, fl, x, seeds = _ddp_case(kind)
            n = DDP_BATCH // world; part = slice(rank * n, (rank + 1) * n)
            dmodel, dfl = DDP(model), DDP(fl)       # held until after backward: a freed wrapper takes its gradient hooks along
            out = obj(x[part], dmodel, dfl, generator=PerSampleGenerator(seeds[part]))
            out.loss.backward()
            res[kind] = (out.loss.detach(), _grads(model, fl))
        torch.save(res, f'{out_dir}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()

def _run_ddp(world, tmp_path):
    "Run `_ddp_worker` in a gloo group of `world` processes (one: this process itself; more: spawned ones)."
    import torch.multiprocessing as mp
    out = tmp_path / f'world{world}'; out.mkdir()
    args = (world, str(tmp_path / f'init{world}'), str(out))
    if world == 1: _ddp_worker(0, *args)
    else: mp.spawn(_ddp_worker, args=args, nprocs=world, join=True)
    return [torch.load(out / f'rank{r}.pt') for r in range(world)]

def test_dinof_loss_under_ddp_matches_one_process(tmp_path):
    want = {}
    for kind in DDP_KINDS:                      # the single-process gradient on the global batch, no wrapper
        obj, model, fl, x, seeds = _ddp_case(kind)
        out = obj(x, model, fl, generator=PerSampleGenerator(seeds)); out.loss.backward()
        want[kind] = (out.loss.detach(), _grads(model, fl))
    one, two = _run_ddp(1, tmp_path), _run_ddp(2, tmp_path)
    for kind in DDP_KINDS:
        torch.testing.assert_close(one[0][kind][0], want[kind][0])
        assert torch.isfinite(two[0][kind][0]) and torch.isfinite(two[1][kind][0])
        torch.testing.assert_close(0.5 * (two[0][kind][0] + two[1][kind][0]), want[kind][0])   # equal halves: the mean of means
        for g1, g2a, g2b, g in zip(one[0][kind][1], two[0][kind][1], two[1][kind][1], want[kind][1]):
            assert torch.equal(g2a, g2b), kind                  # DDP leaves identical gradients on every rank
            torch.testing.assert_close(g1, g, msg=kind); torch.testing.assert_close(g2a, g, msg=kind)
