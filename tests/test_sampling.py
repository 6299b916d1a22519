"Checks of dinof.sampling beyond the notebook: score_sde's PC sampler transcribed literally, batch independence with a real net, NFE."
import math
import pytest
import torch
from dinof.core import PerSampleGenerator
from dinof.sde import VPSDE, VESDE
from dinof.sampling import FlowPrior, GaussianPrior, hybrid_sample, sample_seeds


class AffineFlow(torch.nn.Module):
    "x = m + s z, an exact Gaussian 'flow'."
    def __init__(self, m, s):
        super().__init__(); self.register_buffer('m', m); self.register_buffer('s', s); self.dim = m.numel()
    def decode(self, z): return self.m + self.s * z


def toy_score(sde):
    "Exact score of N(0.5, 0.2^2) data, per coordinate."
    def score_fn(x, t):
        a, s = sde.marginal_coeffs(t)
        a, s = a[:, None].to(x.dtype), s[:, None].to(x.dtype)
        return -(x - 0.5 * a) / (0.04 * a ** 2 + s ** 2)
    return score_fn


def score_sde_pc(sde, score_fn, x, steps, start, generator, corrector, snr=0.16):
    """score_sde's PC sampler, transcribed literally: EulerMaruyama (dt = -1/N) or ReverseDiffusion
    (sde.reverse().discretize, the discrete sigma table) after a Langevin corrector with batch-mean norms;
    output the last predictor's mean. Noise drawn in the same order as dinof's sampler."""
    rsde = sde.reverse(score_fn)
    x_mean = x
    for t in torch.linspace(start, sde.eps, steps, dtype=torch.float64).tolist():
        vt = torch.full((x.shape[0],), t, dtype=x.dtype)
        if corrector:
            grad, z = score_fn(x, vt), torch.randn(x.shape, generator=generator, dtype=x.dtype)
            step = (snr * z.norm(dim=-1).mean() / grad.norm(dim=-1).mean()) ** 2 * 2
            x = x + step * grad + (2 * step).sqrt() * z
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        if isinstance(sde, VESDE):
            f, G = rsde.discretize(x, vt)
            x_mean = x - f
        else:
            drift, G = rsde.sde(x, vt)
            G = G * math.sqrt(1. / sde.N)
            x_mean = x - drift / sde.N
        x = x_mean + G[:, None] * z
    return x_mean


@pytest.mark.parametrize('sde', [VPSDE(), VESDE()], ids=['VP-euler_maruyama', 'VE-reverse_diffusion+langevin'])
def test_matches_score_sde_pc_at_paper_settings(sde):
    "DiNof's settings (N=1000, 600 steps from t_m=0.6): same noise, same samples as score_sde's literal algorithm."
    torch.manual_seed(0)
    n, start = 500, 0.6
    a, s = sde.marginal_coeffs(torch.tensor([start], dtype=torch.float64))
    prior = FlowPrior(AffineFlow(torch.full((3,), 0.5 * a.item()), torch.full((3,), (0.04 * a.item() ** 2 + s.item() ** 2) ** 0.5)).double(), start)
    ours = hybrid_sample(prior, sde, toy_score(sde), n=n, method='pc', generator=torch.Generator().manual_seed(1))
    assert ours.nfe == (1200 if isinstance(sde, VESDE) else 600)
    g = torch.Generator().manual_seed(1)
    x0 = prior.sample(n, generator=g)
    ref = score_sde_pc(sde, toy_score(sde), x0, 600, start, g, corrector=isinstance(sde, VESDE))
    # VP: h = 0.599/599 = 1/N exactly, so identical up to round-off; VE: the continuous sigma(t) against the
    # discrete table shifts each G by < 1%, which moves samples by a small fraction of their spread (0.2)
    tol = 1e-9 if isinstance(sde, VPSDE) else 0.01
    assert (ours.samples - ref).abs().max().item() < tol
    assert abs(ours.samples.std().item() - 0.2) < 0.02


class MLP(torch.nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 1, 64), torch.nn.SiLU(), torch.nn.Linear(64, d))
    def forward(self, x, t): return self.net(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize('method,kw', [('pc', dict(corrector=None, steps=20)), ('pc', dict(corrector='ald', steps=10)),
                                       ('euler', dict(steps=7)), ('dpm2', dict(steps=4))])
def test_batch_independent_with_a_network(method, kw):
    "A float32 network: sample i is bit-identical in batches of 9, 4, and (first=4) 5."
    torch.manual_seed(0)
    net = MLP().eval()
    sde = VPSDE()
    prior = GaussianPrior(sde, (4,))
    big = hybrid_sample(prior, sde, net, n=9, method=method, seed=11, **kw).samples
    assert torch.equal(hybrid_sample(prior, sde, net, n=4, method=method, seed=11, **kw).samples, big[:4])
    assert torch.equal(hybrid_sample(prior, sde, net, n=5, method=method, seed=11, first=4, **kw).samples, big[4:])


def test_seeds_and_denoise():
    seeds = sample_seeds(0, 5)
    assert seeds == sample_seeds(0, 8)[:5] and len(set(seeds)) == 5 and all(0 <= s < 2 ** 63 for s in seeds)
    assert sample_seeds(1, 3) != sample_seeds(0, 3)
    sde, net = VPSDE(), MLP().eval()
    prior = GaussianPrior(sde, (4,))
    plain = hybrid_sample(prior, sde, net, n=3, method='heun', steps=3)
    den = hybrid_sample(prior, sde, net, n=3, method='heun', steps=3, denoise=True)
    assert (plain.nfe, den.nfe) == (6, 7)
    assert not torch.equal(plain.samples, den.samples)


def test_pc_without_denoise_returns_noisy_state():
    sde, net = VESDE(), MLP().eval()
    prior = GaussianPrior(sde, (4,))
    a = hybrid_sample(prior, sde, net, n=3, steps=5, corrector=None)
    b = hybrid_sample(prior, sde, net, n=3, steps=5, corrector=None, denoise=False)
    assert a.nfe == b.nfe == 5 and not torch.equal(a.samples, b.samples)


class ConvScore(torch.nn.Module):
    "A tiny time-conditioned conv net for [B, 1, 8, 8] images."
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.Conv2d(8, 1, 3, padding=1)
    def forward(self, x, t):
        h = torch.cat([x, t[:, None, None, None].expand_as(x)], 1)
        return self.c2(torch.nn.functional.silu(self.c1(h)))


def test_images_from_a_glow_prior():
    "Image samples [n, 1, 8, 8] from a (tiny, untrained) Glow at t_m: shapes, NFE, batch independence."
    from dinof.flow import Glow
    torch.manual_seed(0)
    glow = Glow(in_shape=(1, 8, 8), levels=2, depth=2, hidden=16)
    glow.initialize(torch.randn(16, 1, 8, 8)).eval()
    prior, sde, net = FlowPrior(glow, 0.6), VPSDE(), ConvScore().eval()
    assert prior.shape == (1, 8, 8) and prior.latent_dim == 64
    for kw, nfe in ((dict(method='pc', steps=4, corrector='ald'), 8), (dict(method='dpm2', steps=2), 4)):
        big = hybrid_sample(prior, sde, net, n=5, seed=2, **kw)
        assert big.samples.shape == (5, 1, 8, 8) and big.nfe == nfe and torch.isfinite(big.samples).all()
        assert torch.equal(hybrid_sample(prior, sde, net, n=2, seed=2, **kw).samples, big.samples[:2])


def test_prior_shape_mismatch_with_a_conv_net():
    with pytest.raises(ValueError, match='prior'):
        hybrid_sample(GaussianPrior(VPSDE(), (3, 8, 8)), VPSDE(), ConvScore().eval(), n=2, method='euler', steps=1)
