"""The prior ladder from a script (the same as `dinof bench prior`; the logic is dinof.ladder, nbs/12a_ladder.ipynb).

    OMP_WAIT_POLICY=PASSIVE nice python tools/prior_ladder.py --root bench/fashion_mnist --rungs standard,moments_full --settings dpm2
"""
import argparse, sys
from pathlib import Path


def main(argv=None):
    from dinof.ladder import RUNGS, bench_prior, ladder_table, load_ladder
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--root', default='bench/fashion_mnist')
    p.add_argument('--score', default='dinof')
    p.add_argument('--rungs', default=','.join(RUNGS))
    p.add_argument('--settings', default='dpm2,paper')
    p.add_argument('--flow-steps', type=int, default=1500)
    p.add_argument('--t-m', type=float, default=None)
    p.add_argument('--device', default=None)
    p.add_argument('--compile', action='store_true', help='sample through torch.compile (~1.4x faster on a CPU)')
    a = p.parse_args(argv)
    bench_prior(Path(a.root), a.score, a.rungs.split(','), a.settings.split(','), flow_steps=a.flow_steps, t_m=a.t_m, device=a.device, compile=a.compile)
    print(ladder_table(load_ladder(a.root), a.score if a.t_m is None else f'{a.score}-tm{a.t_m:g}'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
