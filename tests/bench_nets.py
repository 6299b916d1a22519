"""Throughput of the small NCSN++ / DDPM++ networks on the CPU (batch 64): forward (eval, no_grad) and a training
step (forward, backward, Adam), medians over repeats, and peak memory; against score_sde's own figures (recorded on
this kind of machine: 2 threads, batch 64, fixture README) and, measured in the same run, against a baseline that
resamples the way score_sde's native `upfirdn2d` does (a single-channel convolution over a [B*C, 1, H, W] reshape).

Usage: python tests/bench_nets.py [--threads 2] [--repeats 5] [--configs ncsnpp_small_32,ddpmpp_small_32,...]
The variants of a configuration are timed in one process, interleaved repeat by repeat (so a changing load on a
shared machine hits them alike); the peak RSS of each is measured in a fresh process of its own.
"""
import argparse, json, os, resource, statistics, subprocess, sys, time

# score_sde_pytorch on this kind of machine (fixture README): (train step s, forward s)
ORIGINAL = {'ncsnpp_small_32': (2.49, 0.48), 'ncsnpp_small_32x1': (2.20, 0.49), 'ddpmpp_small_32': (0.88, 0.25)}

def _setup(name, variant, batch):
    import torch
    import dinof.nets as N
    torch.manual_seed(0)
    net = N.build(name)
    C, S = net.num_channels, net.image_size
    x = torch.rand(batch, C, S, S)
    labels = torch.rand(batch) * 10 + 0.05 if net.embedding_type == 'fourier' else torch.rand(batch) * 999
    if variant == 'channels_last':
        net = net.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    def step():
        net.train()
        loss = net(x, labels).square().mean()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    def fwd():
        net.eval()
        with torch.no_grad(): net(x, labels)
    return fwd, step

def _resampling(variant):
    "score_sde's resampling (baseline): upfirdn2d over a [B*C, 1, H, W] reshape; ours: one depthwise convolution."
    import dinof.nets as N
    N.fir_filter = _REF if variant == 'baseline' else _FAST

def _worker(name, variants, threads, repeats, batch):
    "Times the variants interleaved (one repeat of each in turn), so that a changing load hits them alike."
    global _REF, _FAST
    import torch
    import dinof.nets as N
    torch.set_num_threads(threads)
    _FAST = N.fir_filter
    _REF = lambda x, k, a, b, stride=1: N.upfirdn2d(x, k, down=stride, pad=(a, b))
    variants = variants.split(',')
    fns = {v: _setup(name, v, batch) for v in variants}
    times = {v: ([], []) for v in variants}
    for v in variants:
        _resampling(v); fns[v][0](); fns[v][1]()        # warm-up
    for _ in range(repeats):
        for v in variants:
            _resampling(v)
            for i, f in enumerate(fns[v]):
                t0 = time.perf_counter(); f(); times[v][i].append(time.perf_counter() - t0)
    print(json.dumps({v: dict(fwd=statistics.median(times[v][0]), step=statistics.median(times[v][1])) for v in variants}))

def _peak(name, variant, threads, batch):
    "Peak resident memory (MiB) of a fresh process that runs one forward pass and one training step."
    import torch
    torch.set_num_threads(threads)
    _worker_peak = _setup(name, variant, batch)
    if variant == 'baseline':
        import dinof.nets as N
        N.fir_filter = lambda x, k, a, b, stride=1: N.upfirdn2d(x, k, down=stride, pad=(a, b))
    _worker_peak[0](); _worker_peak[1]()
    print(json.dumps(dict(peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--configs', default='ncsnpp_small_32,ddpmpp_small_32')
    ap.add_argument('--variants', default='baseline,ours,channels_last')
    ap.add_argument('--worker', nargs=2)
    ap.add_argument('--peak', nargs=2)
    a = ap.parse_args()
    if a.worker: return _worker(*a.worker, a.threads, a.repeats, a.batch)
    if a.peak: return _peak(*a.peak, a.threads, a.batch)
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '33554432', 'MALLOC_TRIM_THRESHOLD_': '4294967296', 'MALLOC_TOP_PAD_': '536870912'}
    run = lambda *args: subprocess.run([sys.executable, __file__, *args, '--threads', str(a.threads), '--repeats', str(a.repeats),
                                        '--batch', str(a.batch)], capture_output=True, text=True, env=env)
    print(f'batch {a.batch}, {a.threads} threads, median of {a.repeats} (variants interleaved); '
          f'load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')
    print(f"{'config':18s} {'variant':14s} {'forward s':>10s} {'step s':>8s} {'peak MiB':>9s}  {'vs score_sde fwd, step':24s} vs baseline fwd, step")
    for name in a.configs.split(','):
        out = run('--worker', name, a.variants)
        if out.returncode: print(out.stderr); continue
        res = json.loads(out.stdout.strip().splitlines()[-1])
        for v, r in res.items():
            pk = run('--peak', name, v)
            peak = json.loads(pk.stdout.strip().splitlines()[-1])['peak_mib'] if pk.returncode == 0 else float('nan')
            orig = ORIGINAL.get(name) if a.batch == 64 else None
            vs_o = f'{orig[1] / r["fwd"]:5.2f}x {orig[0] / r["step"]:5.2f}x' if orig else '     -'
            vs_b = f'{res["baseline"]["fwd"] / r["fwd"]:5.2f}x {res["baseline"]["step"] / r["step"]:5.2f}x' if 'baseline' in res else '     -'
            print(f'{name:18s} {v:14s} {r["fwd"]:10.3f} {r["step"]:8.3f} {peak:9.0f}  {vs_o:24s} {vs_b}', flush=True)
    print(f'load average after: {os.getloadavg()[0]:.1f}')

if __name__ == '__main__': main()
