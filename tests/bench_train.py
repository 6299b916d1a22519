"""Speed of the trainer's step.

CPU (default): the trainer's step for the `fmnist_small` preset against a minimal hand-written PyTorch loop doing the same
work (copies of the same networks, the same data and `DiNofLoss` forward, backward, clipping over both networks, Adam,
an EMA update) in the same process, in interleaved pairs of steps so that load from other processes hits both alike.
Reports images/s and the ratio of the CPU time per step (the difference is the trainer's bookkeeping: per-step seeding,
row-sliced noise, per-network gradient norms, one sync with the non-finite checks, the warm-up scheduler, two EMAs);
it should be at most 1.10.

    python tests/bench_train.py [--pairs 10] [--threads N]

CUDA: images/s of the trainer's step for a paper preset (default vp_cifar10_ddpmpp_continuous, batch 128) in float32,
with bf16 autocast, then adding channels_last, PyTorch's fused attention (F.scaled_dot_product_attention in place of the
two bmm's of the attention blocks; checked against them first) and torch.compile.

    python tests/bench_train.py --device cuda [--preset NAME] [--batch 128] [--steps 10]
"""
import argparse, statistics, sys, tempfile, time
import torch
import torch.nn.functional as F
from dinof import nets
from dinof.config import get_config
from dinof.core import scale_data
from dinof.data import forever
from dinof.train import Trainer

def hand_loop(t: Trainer):
    "A minimal training step over the trainer's own networks' copies, data and loss: what any PyTorch user would write."
    import copy
    score, flow = copy.deepcopy(t.score_model), copy.deepcopy(t.flow)
    params = [p for m in (score, flow) for p in m.parameters() if p.requires_grad]
    o = t.cfg.optim
    opt = torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, foreach=True)   # the trainer's Adam kernel
    ema = [p.detach().clone() for p in params]
    it = forever(t.loader)
    g = torch.Generator(t.device).manual_seed(0)
    score.train(); flow.train()
    def step():
        x = scale_data(next(it).to(t.device), t._centered)
        opt.zero_grad(set_to_none=True)
        out = t.loss_fn(x, score, flow, generator=g)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        opt.step()
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - t.ema['score'].rate)
        return out.loss.item()
    return step

def _trainer_step(t: Trainer):
    "One step of the trainer's loop (`Trainer.train` runs this, between its logging and checkpointing)."
    if getattr(t, '_it', None) is None: t._it = t._data_iter(); t.score_model.train(); t.flow.train()
    t._step(t.step + 1); t.step += 1

def cpu(args):
    torch.set_num_threads(args.threads or torch.get_num_threads())
    with tempfile.TemporaryDirectory() as d:
        cfg = get_config('fmnist_small', 'training.log_freq=1000000', 'training.snapshot_freq=1000000', 'training.snapshot_minutes=1000')
        t = Trainer(cfg, d, progress=False, device='cpu')
        step = hand_loop(t)
        ours = lambda: _trainer_step(t)
        for _ in range(2): ours(); step()                             # warm-up: allocator, oneDNN primitives
        rows = []
        for i in range(args.pairs):                                    # interleaved, order alternating: drift and load hit both
            first, second = (ours, step) if i % 2 == 0 else (step, ours)
            times = []
            for f in (first, second):
                c, w = time.process_time(), time.perf_counter(); f()
                times.append((time.process_time() - c, time.perf_counter() - w))
            rows.append(times if i % 2 == 0 else times[::-1])
            (co, wo), (ch, wh) = rows[-1]
            print(f'pair {i}: trainer {co:.3f} s CPU ({wo:.3f} wall), hand loop {ch:.3f} s CPU ({wh:.3f} wall)', flush=True)
    med = lambda xs: statistics.median(xs)
    co, ch = med([r[0][0] for r in rows]), med([r[1][0] for r in rows])
    wo, wh = med([r[0][1] for r in rows]), med([r[1][1] for r in rows])
    ratio = med([r[0][0] / r[1][0] for r in rows])
    B = cfg.training.batch_size
    print(f'fmnist_small, batch {B}, {torch.get_num_threads()} thread(s), median of {args.pairs} interleaved pairs of steps:')
    print(f'  trainer   {co:.3f} s CPU/step ({wo:.3f} s wall) = {B / wo:.1f} images/s')
    print(f'  hand loop {ch:.3f} s CPU/step ({wh:.3f} s wall) = {B / wh:.1f} images/s')
    print(f'  ratio trainer / hand loop (median of per-pair CPU-time ratios) = {ratio:.3f} (required <= 1.10)')
    return 0 if ratio <= 1.10 else 1

def _sdpa_forward(self, x):
    "The attention block with PyTorch's fused scaled_dot_product_attention (the same maths as nets.AttnBlock.forward)."
    B, C, H, W = x.shape
    h = self.GroupNorm_0(x)
    q, k, v = (nin(h).reshape(B, 1, C, H * W).transpose(2, 3) for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
    h = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(B, C, H, W)
    return nets._join(x, self.NIN_3(h), self.skip_rescale)

def _steps(t: Trainer, n: int) -> float:
    "Seconds for `n` steps of the trainer's loop (without its end-of-call checkpoint: a paper model's is a gigabyte)."
    t._it = t._data_iter(); t.score_model.train(); t.flow.train()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(n): t._step(t.step + 1); t.step += 1
    torch.cuda.synchronize()
    return time.perf_counter() - t0

def _synthetic_images(folder, n=1024, size=32):
    "Smooth random RGB images as PNGs (the device machine has no datasets)."
    from pathlib import Path
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        x = F.avg_pool2d(torch.rand(1, 3, size + 8, size + 8, generator=g), 9, stride=1)[0]
        x = ((x - x.min()) / (x.max() - x.min()) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(x).save(Path(folder) / f'{i:04d}.png')
    return folder

def cuda(args):
    assert torch.cuda.is_available(), '--device cuda: no CUDA device'
    if args.data_root is None:
        from dinof.data import get_dataset
        try: get_dataset(split='train', **get_config(args.preset).dataset_kwargs())
        except FileNotFoundError:
            args.data_root = _synthetic_images(tempfile.mkdtemp()); print(f'no {args.preset} data here: synthetic images in {args.data_root}')
    torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    # the fused attention agrees with the two bmm's first
    blk = nets.AttnBlock(64).cuda().eval()
    x = torch.randn(4, 64, 16, 16, device='cuda')
    with torch.no_grad(): torch.testing.assert_close(_sdpa_forward(blk, x), blk(x), rtol=1e-3, atol=1e-3)
    plain = nets.AttnBlock.forward
    variants = [('float32', dict(autocast='off')), ('bf16 autocast', dict(autocast='bf16')),
                ('bf16 + channels_last', dict(autocast='bf16', cl=True)),
                ('bf16 + channels_last + fused attention', dict(autocast='bf16', cl=True, sdpa=True)),
                ('bf16 + channels_last + fused attention + torch.compile', dict(autocast='bf16', cl=True, sdpa=True, compile=True))]
    print(f'{args.preset}, batch {args.batch}, {torch.cuda.get_device_name()}')
    for name, v in variants:
        nets.AttnBlock.forward = _sdpa_forward if v.get('sdpa') else plain
        with tempfile.TemporaryDirectory() as d:
            cfg = get_config(args.preset, f'training.batch_size={args.batch}', f'training.autocast={v["autocast"]}',
                             f'training.compile={str(v.get("compile", False)).lower()}', 'training.log_freq=1000000',
                             'training.snapshot_freq=1000000', 'training.snapshot_minutes=1000', 'training.num_workers=4',
                             *(['data.dataset=image_folder', f'data.root={args.data_root}'] if args.data_root else []))
            t = Trainer(cfg, d, progress=False, device='cuda')
            if v.get('cl'):
                t.score_model.to(memory_format=torch.channels_last); t.flow.to(memory_format=torch.channels_last)
            _steps(t, args.warmup)
            dt = _steps(t, args.steps) / args.steps
            print(f'  {name:58s} {dt * 1e3:8.1f} ms/step  {args.batch / dt:8.0f} images/s  '
                  f'peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB', flush=True)
            del t; torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    nets.AttnBlock.forward = plain
    return 0

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--pairs', type=int, default=10, help='CPU: interleaved pairs of steps (trainer, hand loop)')
    p.add_argument('--steps', type=int, default=10, help='CUDA: timed steps per variant')
    p.add_argument('--threads', type=int, default=None, help='CPU threads')
    p.add_argument('--preset', default='vp_cifar10_ddpmpp_continuous', help='CUDA: the paper preset')
    p.add_argument('--batch', type=int, default=128, help='CUDA: global batch')
    p.add_argument('--warmup', type=int, default=5, help='CUDA: untimed steps (compilation happens here)')
    p.add_argument('--data-root', default=None, help='CUDA: a folder of images to train on instead of the preset dataset')
    args = p.parse_args()
    return cpu(args) if args.device == 'cpu' else cuda(args)

if __name__ == '__main__':
    sys.exit(main())
