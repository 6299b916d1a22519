"""The prior ladder from a script: `dinof bench prior` with the same arguments (its logic is dinof.ladder,
nbs/12a_ladder.ipynb; this file only saves an install of the console script).

    OMP_WAIT_POLICY=PASSIVE nice python tools/prior_ladder.py --root bench/fashion_mnist --rungs standard,moments_full --settings dpm2
"""
import sys

if __name__ == '__main__':
    from dinof.cli import main
    sys.exit(main(['bench', 'prior', *sys.argv[1:]]))
