"Checks of dinof.likelihood with a real (nonlinear, float32) score network."
import torch
from dinof.sde import VPSDE
from dinof.sampling import GaussianPrior
from dinof.likelihood import log_likelihood, bits_per_dim


class MLP(torch.nn.Module):
    def __init__(self, d=3):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 1, 32), torch.nn.Tanh(), torch.nn.Linear(32, d))
    def forward(self, x, t): return self.net(torch.cat([x, t[:, None]], 1))


def test_hutchinson_is_unbiased_for_a_network():
    "One point repeated 256 times, each copy with its own probe: the mean matches the exact trace within 4 s.e."
    torch.manual_seed(0)
    net, sde = MLP().eval(), VPSDE()
    prior = GaussianPrior(sde, (3,))
    x = torch.randn(1, 3)
    exact = log_likelihood(x, prior, sde, net, trace='exact')
    est = log_likelihood(x.expand(256, 3).contiguous(), prior, sde, net, trace='rademacher', seed=5)
    assert torch.isfinite(est).all() and est.std() > 1e-4
    assert (est.mean() - exact[0]).abs() < 4 * est.std() / 16 + 1e-3


def test_batch_independence_and_offset():
    torch.manual_seed(0)
    net, sde = MLP().eval(), VPSDE()
    prior = GaussianPrior(sde, (3,))
    x = torch.randn(6, 3)
    full = log_likelihood(x, prior, sde, net, seed=1)
    part = log_likelihood(x[2:4], prior, sde, net, seed=1, first=2)
    assert torch.allclose(full[2:4], part, atol=1e-3)   # same probes; the shared adaptive steps differ within rtol
    bpd = bits_per_dim(x, prior, sde, net, offset=7., trace='exact')
    ll = log_likelihood(x, prior, sde, net, trace='exact')
    assert torch.allclose(bpd, -ll / (3 * torch.log(torch.tensor(2.))) + 7., atol=1e-5)


def test_likelihood_keeps_only_the_end_state(monkeypatch):
    "The ODE from eps to t_m keeps only its current state: peak host memory of a few states, however many steps."
    import tracemalloc
    from scipy.integrate import RK45
    sde = VPSDE()
    x = torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    score = lambda x, t: -x / sde.marginal_coeffs(t)[1][:, None] ** 2   # elementwise: a cheap divergence
    steps, step = [], RK45.step
    monkeypatch.setattr(RK45, 'step', lambda self: steps.append(self.t) or step(self))
    ll = log_likelihood(x, GaussianPrior(sde, (64,)), sde, score, rtol=1e-8, atol=1e-8)
    monkeypatch.undo()
    assert len(steps) > 30 and torch.isfinite(ll).all()     # keeping every step would cost > 2 x 30 states
    tracemalloc.start()                                      # numpy's allocations are traced; measured: 19 states
    try:
        log_likelihood(x, GaussianPrior(sde, (64,)), sde, score, rtol=1e-8, atol=1e-8)
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert peak < 30 * x.numel() * 8, (peak / (x.numel() * 8), len(steps))
