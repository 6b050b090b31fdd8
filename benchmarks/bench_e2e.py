"""End-to-end benchmark (same as `qrerank bench`): qrerank vs the official transformers recipes.

python benchmarks/bench_e2e.py --preset 0.6B --docs 8 --requests 3 --json results.json
"""

import argparse

from qrerank.bench.run import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args())
