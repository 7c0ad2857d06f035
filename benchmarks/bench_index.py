"""The gallery index benchmark, as a script: the same arguments as `cir bench index`.

    python benchmarks/bench_index.py --sizes 10000,100000
"""
import sys

from cir_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "index", *sys.argv[1:]]))
