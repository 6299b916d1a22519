"Tighter statistical checks of the SDEs than the notebook affords in CI time."
import numpy as np, pytest, torch
from dinof.sde import VPSDE, SubVPSDE, VESDE

MU = torch.tensor([0.6, -0.3], dtype=torch.float64)
SIGMA = torch.tensor([[0.30, 0.12], [0.12, 0.10]], dtype=torch.float64)

def marginal(sde, t):
    a, s = sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
    return a.item() * MU, a.item() ** 2 * SIGMA + s.item() ** 2 * torch.eye(2, dtype=torch.float64)

def score(sde):
    def fn(x, t):
        a, s = sde.marginal_coeffs(t)
        cov = a[:, None, None] ** 2 * SIGMA + s[:, None, None] ** 2 * torch.eye(2, dtype=x.dtype)
        return -torch.linalg.solve(cov, (x - a[:, None] * MU).unsqueeze(-1)).squeeze(-1)
    return fn

def heun_pf(sde, x, t_m, steps):
    rsde = sde.reverse(score(sde), probability_flow=True)
    ts = torch.linspace(t_m, sde.eps, steps + 1, dtype=torch.float64)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        dt = (t1 - t0).item()
        d1, _ = rsde.sde(x, t0.expand(len(x)))
        d2, _ = rsde.sde(x + d1 * dt, t1.expand(len(x)))
        x = x + 0.5 * (d1 + d2) * dt
    return x

@pytest.mark.slow
@pytest.mark.parametrize('sde', [VPSDE(), SubVPSDE(), VESDE()], ids=['vp', 'subvp', 've'])
def test_probability_flow_maps_marginal_to_marginal(sde):
    # a deterministic map of a linear-Gaussian problem: the pushforward of N(m, C) must be N(m_eps, C_eps); with 200k
    # samples the covariance estimate is good to ~0.3% (5 standard errors ~ 0.016 relative to Sigma's scale)
    g = torch.Generator().manual_seed(0)
    m, C = marginal(sde, 0.6)
    x = m + torch.randn(200_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(C).T
    y = heun_pf(sde, x, 0.6, 500)
    m_eps, C_eps = marginal(sde, sde.eps)
    assert torch.allclose(y.mean(0), m_eps, atol=0.01)
    assert torch.allclose(torch.cov(y.T), C_eps, atol=0.016 * SIGMA.diagonal().max().item())
