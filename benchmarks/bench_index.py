"""Gallery index benchmark; same as `cir bench index` (arguments are passed through).

    python benchmarks/bench_index.py --sizes 10000,100000
    nice -n 10 python benchmarks/bench_index.py --sizes 1000000 --kinds ivfpq   # minutes, ~18 GB of disk
"""
import sys

from cir_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "index", *sys.argv[1:]]))
