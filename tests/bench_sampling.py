"""Benchmark of the sampler's own overhead: wall time of `hybrid_sample` / (NFE x one score-net forward at the same batch).

A ratio of 1.00 means the sampler costs nothing beyond its network evaluations; the goal is <= 1.05 on the CPU.
Run: `.venv/bin/python tests/bench_sampling.py [--quick]` (not collected by pytest: the name does not start with test_).
The baseline is measured in the same run and interleaved with the sampler, so that load from other processes hits
both alike: for each of `repeats` rounds, time `nfe` back-to-back forwards of the score model at the same batch, then
the sampler; `ratio` is the median over rounds of (sampler wall time) / (that round's baseline). `in-net` is the
same run's wall time divided by the time spent inside the score model's calls during sampling (timed by a wrapper):
immune to load drift between the two measurements, it is the sampler's own overhead.
"""
import argparse, statistics, time
import torch
from dinof.sde import VPSDE, VESDE
from dinof.nets import ScoreModel, build
from dinof.sampling import GaussianPrior, hybrid_sample


def forwards_time(score_fn, x, t, k):
    "Wall time of `k` back-to-back score evaluations."
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(k): score_fn(x, t)
    return time.perf_counter() - t0


class Timed:
    "A score function that accumulates the wall time spent inside its calls."
    def __init__(self, fn): self.fn, self.seconds = fn, 0.
    def __call__(self, x, t):
        t0 = time.perf_counter(); out = self.fn(x, t); self.seconds += time.perf_counter() - t0
        return out


def bench(name, net, sde, shape, n, runs, repeats):
    score = ScoreModel(net.eval(), sde)
    prior = GaussianPrior(sde, shape)
    x = prior.sample(n, generator=torch.Generator().manual_seed(0))
    t = torch.full((n,), 0.5)
    forwards_time(score, x, t, 2)   # warm-up
    print(f'\n{name}: batch {n}, sample shape {shape}, {torch.get_num_threads()} thread(s), median of {repeats} rounds')
    print(f'{"method":<44} {"NFE":>5} {"wall s":>8} {"fwd ms":>8} {"ratio":>6} {"in-net":>7}')
    for label, kw in runs:
        walls, ratios, fwds, innet = [], [], [], []
        for _ in range(repeats):
            timed = Timed(score)
            t0 = time.perf_counter()
            res = hybrid_sample(prior, sde, timed, n=n, **kw)
            wall = time.perf_counter() - t0
            base = forwards_time(score, x, t, res.nfe)
            walls.append(wall); fwds.append(base / res.nfe); ratios.append(wall / base); innet.append(wall / timed.seconds)
        print(f'{label:<44} {res.nfe:>5} {statistics.median(walls):>8.2f} {1e3 * statistics.median(fwds):>8.2f} '
              f'{statistics.median(ratios):>6.3f} {statistics.median(innet):>7.3f}')


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='fewer steps')
    ap.add_argument('--threads', type=int, default=torch.get_num_threads())
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    k = 1 if a.quick else 2
    unet_runs = [
        ('pc euler_maruyama, per-sample seeds', dict(method='pc', steps=10 * k)),
        ('pc euler_maruyama, one torch.Generator', dict(method='pc', steps=10 * k, generator=torch.Generator().manual_seed(0))),
        ('heun (edm schedule)', dict(method='heun', steps=5 * k, schedule='edm')),
        ('dpm3 (logsnr schedule)', dict(method='dpm3', steps=3 * k, schedule='logsnr')),
        ('rk45 rtol=atol=1e-3', dict(method='rk45', rtol=1e-3, atol=1e-3)),
    ]
    bench('NCSN++ small (ddpmpp_small_32, VP)', build('ddpmpp_small_32'), VPSDE(), (3, 32, 32), 16, unet_runs, a.repeats)
    mlp_runs = [
        ('pc euler_maruyama, per-sample seeds', dict(method='pc', steps=100 * k)),
        ('pc reverse_diffusion + langevin (VE default)', dict(method='pc', steps=50 * k)),
        ('heun', dict(method='heun', steps=50 * k)),
        ('dpm2', dict(method='dpm2', steps=50 * k)),
    ]
    bench('MLP (mlp_toy_ve, VE)', build('mlp_toy_ve'), VESDE(), (2,), 4096, mlp_runs, a.repeats)
