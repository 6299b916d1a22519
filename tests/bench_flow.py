"""Benchmark: dinof.flow.Glow against normflows' Glow built to the same shapes (as the DiNof authors build it).

Measures, in the same process and alternating A/B, the median time of (1) an NLL training step (forward + backward) and
(2) decoding a batch of latents (sampling) under `no_grad`, and prints the ratios normflows / dinof (> 1: dinof faster).
By default one thread and CPU time (`time.process_time`): on a shared machine that is far steadier than wall time;
`--threads 2 --clock wall` gives the wall-clock figures.
Run: `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=536870912 python tests/bench_flow.py`
"""
import argparse, statistics, sys, time, warnings
import torch

def nf_glow(in_shape, L, K, hidden):
    "normflows' Glow as the DiNof authors build it (their `glow` example: GlowBlocks, channel split, GlowBase per level)."
    import normflows as nf
    C, H, W = in_shape
    q0, merges, flows = [], [], []
    for i in range(L):
        fl = [nf.flows.GlowBlock(C * 2 ** (L + 1 - i), hidden, split_mode='channel', scale=True) for _ in range(K)]
        flows.append(fl + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (C * 2 ** (L - i), H // 2 ** (L - i), W // 2 ** (L - i))
        else: shape = (C * 2 ** (L + 1), H // 2 ** L, W // 2 ** L)
        q0.append(nf.distributions.GlowBase(shape))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--shape', default='3,32,32'); ap.add_argument('--levels', type=int, default=2)
    ap.add_argument('--depth', type=int, default=8); ap.add_argument('--hidden', type=int, default=64)
    ap.add_argument('--batch', type=int, default=64); ap.add_argument('--reps', type=int, default=7)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--clock', choices=('cpu', 'wall'), default='cpu')
    a = ap.parse_args(argv)
    warnings.filterwarnings('ignore')
    torch.set_num_threads(a.threads)
    from dinof.flow import Glow, count_params
    shape = tuple(int(s) for s in a.shape.split(','))
    torch.manual_seed(0)
    ours = Glow(in_shape=shape, levels=a.levels, depth=a.depth, hidden=a.hidden)
    theirs = nf_glow(shape, a.levels, a.depth, a.hidden)
    x = torch.randn(a.batch, *shape)
    ours.initialize(x)
    with torch.no_grad(): theirs.log_prob(x, None)          # normflows initialises its ActNorms lazily
    n_ours, n_theirs = count_params(ours), sum(p.numel() for p in theirs.parameters())
    z = torch.randn(a.batch, ours.latent_dim)
    def step_ours():
        ours.zero_grad(set_to_none=True); (-ours.log_prob(x).mean()).backward()
    def step_theirs():
        theirs.zero_grad(set_to_none=True); (-theirs.log_prob(x, None).mean()).backward()
    @torch.no_grad()
    def dec_ours(): ours.decode(z)
    @torch.no_grad()
    def dec_theirs(): theirs.sample(a.batch)
    def timeit(f):
        clock = time.process_time if a.clock == 'cpu' else time.perf_counter
        t = clock(); f(); return clock() - t
    res = {}
    for name, fo, ft in (('nll fwd+bwd', step_ours, step_theirs), ('decode', dec_ours, dec_theirs)):
        fo(); ft()                                           # warm-up
        to, tt = [], []
        for r in range(a.reps):                              # alternate A/B so load changes hit both alike
            if r % 2: to.append(timeit(fo)); tt.append(timeit(ft))
            else: tt.append(timeit(ft)); to.append(timeit(fo))
        res[name] = (statistics.median(to), statistics.median(tt))
    print(f'Glow {shape} levels={a.levels} depth={a.depth} hidden={a.hidden} batch={a.batch} threads={torch.get_num_threads()} clock={a.clock} '
          f'torch {torch.__version__}')
    print(f'parameters: dinof {n_ours:,}  normflows {n_theirs:,}')
    for name, (to, tt) in res.items():
        print(f'{name:12s} dinof {to * 1e3:8.1f} ms  normflows {tt * 1e3:8.1f} ms  speed-up {tt / to:5.2f}x  (median of {a.reps})')
    return res

if __name__ == '__main__': main(sys.argv[1:])
