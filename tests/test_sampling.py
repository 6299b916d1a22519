"Checks of dinof.sampling beyond the notebook: score_sde's PC sampler transcribed literally, batch independence with a real net, NFE."
import math, tracemalloc
import pytest
import torch
from dinof.core import PerSampleGenerator
from dinof.sde import VPSDE, VESDE
from dinof.sampling import FlowPrior, GaussianPrior, hybrid_sample, rk45_sample, sample_seeds


class AffineFlow(torch.nn.Module):
    "x = m + s z, an exact Gaussian 'flow'."
    def __init__(self, m, s):
        super().__init__(); self.register_buffer('m', m); self.register_buffer('s', s); self.latent_dim = m.numel()
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


def same_samples(a, big):
    """Samples of another batch size, equal up to float32 round-off. A sample's noise is bit for bit the same in any batch,
    but the BLAS / oneDNN picks kernels by batch shape (here a [9, 5] and a [4, 5] matmul round alike, on an AVX-512 CPU
    they need not), so results differ by a few ulps (2^-23) per evaluation; over the steps an untrained network grows that
    to < 1e-6 of the samples' largest magnitude (every evaluation perturbed by 8 ulps: at most 7e-7 of it). The tolerance,
    1e-4 of that magnitude, leaves two orders of margin; noise drawn per batch or shared moves samples by their spread."""
    tol = 1e-4 * big.abs().max()
    return a.shape == big.shape and (a - big).abs().max() <= tol

def distinct_samples(a, b, big):
    "Every sample of `a` differs from the same row of `b` by far more than the tolerance (100 times)."
    return (a - b).flatten(1).abs().amax(1).min() > 1e-2 * big.abs().max()


@pytest.mark.parametrize('method,kw', [('pc', dict(corrector=None, steps=20)), ('pc', dict(corrector='ald', steps=10)),
                                       ('euler', dict(steps=7)), ('dpm2', dict(steps=4))])
def test_batch_independent_with_a_network(method, kw):
    "A float32 network: sample i is the same, up to round-off, in batches of 9, 4, and (first=4) 5; other seeds, other samples."
    torch.manual_seed(0)
    net = MLP().eval()
    sde = VPSDE()
    prior = GaussianPrior(sde, (4,))
    big = hybrid_sample(prior, sde, net, n=9, method=method, seed=11, **kw).samples
    assert same_samples(hybrid_sample(prior, sde, net, n=4, method=method, seed=11, **kw).samples, big[:4])
    assert same_samples(hybrid_sample(prior, sde, net, n=5, method=method, seed=11, first=4, **kw).samples, big[4:])
    assert distinct_samples(hybrid_sample(prior, sde, net, n=4, method=method, seed=12, **kw).samples, big[:4], big)
    assert distinct_samples(big[1:], big[:-1], big)                   # no noise shared across the batch


def test_seeds_and_noise_removal():
    seeds = sample_seeds(0, 5)
    assert seeds == sample_seeds(0, 8)[:5] and len(set(seeds)) == 5 and all(0 <= s < 2 ** 63 for s in seeds)
    assert sample_seeds(1, 3) != sample_seeds(0, 3)
    sde, net = VPSDE(), MLP().eval()
    prior = GaussianPrior(sde, (4,))
    plain = hybrid_sample(prior, sde, net, n=3, method='heun', steps=3)
    den = hybrid_sample(prior, sde, net, n=3, method='heun', steps=3, noise_removal=True)
    assert (plain.nfe, den.nfe) == (6, 7)
    assert not torch.equal(plain.samples, den.samples)


def test_pc_without_noise_removal_returns_noisy_state():
    sde, net = VESDE(), MLP().eval()
    prior = GaussianPrior(sde, (4,))
    a = hybrid_sample(prior, sde, net, n=3, steps=5, corrector=None)
    b = hybrid_sample(prior, sde, net, n=3, steps=5, corrector=None, noise_removal=False)
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
        assert same_samples(hybrid_sample(prior, sde, net, n=2, seed=2, **kw).samples, big.samples[:2])   # up to round-off
        assert distinct_samples(big.samples[1:], big.samples[:-1], big.samples)


def test_prior_shape_mismatch_with_a_conv_net():
    with pytest.raises(ValueError, match='prior'):
        hybrid_sample(GaussianPrior(VPSDE(), (3, 8, 8)), VPSDE(), ConvScore().eval(), n=2, method='euler', steps=1)


def test_rk45_keeps_only_the_end_state():
    "rk45 holds the current state only: its peak host memory is a few states, however many steps it takes."
    sde = VESDE()
    x = torch.randn(64, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    state = x.numel() * 8
    times = []
    traced = rk45_sample(sde, toy_score(sde), x, 1., sde.eps, rtol=1e-8, atol=1e-8, callback=lambda k, t, y: times.append(t))
    assert len(times) > 30 and times[-1] == sde.eps          # 41 steps: keeping them all costs > 80 states
    tracemalloc.start()                                      # (numpy's allocations are traced; measured: 13 states)
    try:
        out = rk45_sample(sde, toy_score(sde), x, 1., sde.eps, rtol=1e-8, atol=1e-8)
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert peak < 30 * state, (peak / state, len(times))
    assert torch.equal(out, traced)                          # the callback changes nothing but what is seen
    res = hybrid_sample(GaussianPrior(sde, (3,)), sde, toy_score(sde), n=4, method='rk45', trajectory=True)
    assert len(res.trajectory) > 2 and torch.equal(res.trajectory[-1], res.samples)


def test_first_call_errors_that_are_not_shape_errors_propagate():
    "Only a shape mismatch becomes the prior ValueError; out-of-memory and dtype errors keep their type and message."
    sde, prior = VPSDE(), GaussianPrior(VPSDE(), (1, 8, 8))
    def oom(x, t): raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.15 GiB total capacity)')
    def generic(x, t): raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 MiB')
    for fn in (oom, generic, ConvScore().double()):      # the last: a float64 net given float32 samples
        with pytest.raises(RuntimeError) as e: hybrid_sample(prior, sde, fn, n=2, method='euler', steps=1)
        assert type(e.value) in (RuntimeError, torch.OutOfMemoryError) and 'prior' not in str(e.value), e.value
    with pytest.raises(RuntimeError, match='out of memory'): hybrid_sample(prior, sde, oom, n=2, method='euler', steps=1)
    with pytest.raises(ValueError, match=r'prior: samples of shape \(3, 8, 8\) do not fit.*channels'):
        hybrid_sample(GaussianPrior(sde, (3, 8, 8)), sde, ConvScore().eval(), n=2, method='euler', steps=1)
    lin = torch.nn.Linear(5, 5)
    with pytest.raises(ValueError, match='prior'):
        hybrid_sample(GaussianPrior(sde, (4,)), sde, lambda x, t: lin(x), n=2, method='euler', steps=1)


class _SpyPrior(GaussianPrior):
    "A Gaussian prior that remembers the generator it was given."
    def sample(self, n, *, generator=None, **kw):
        self.generator = generator
        return super().sample(n, generator=generator, **kw)


def test_per_sample_streams_are_cpu_streams_on_any_device():
    "Asked for another device, hybrid_sample still draws from CPU generators and moves the draws (checked with 'meta')."
    sde = VESDE()
    prior = _SpyPrior(sde, (2,))
    res = hybrid_sample(prior, sde, lambda x, t: -x, n=3, method='pc', steps=3, corrector='ald', device='meta')
    assert res.samples.device.type == 'meta' and res.samples.shape == (3, 2) and res.nfe == 6
    assert {g.device.type for g in prior.generator.generators} == {'cpu'}
    on_cpu = hybrid_sample(prior, sde, lambda x, t: -x, n=3, method='pc', steps=3, corrector='ald', trajectory=True)
    assert torch.equal(on_cpu.trajectory[0], GaussianPrior(sde, (2,)).sample(3, generator=PerSampleGenerator(sample_seeds(0, 3))))
