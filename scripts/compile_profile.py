"""compile_profile.py: where a cold start's compile time goes.

Builds one of the benchmark's networks (scripts/benchmark.py) with an empty
compile cache, in a fresh process, and runs its first SGD step while timing
every function Numba compiles.  Numba compiles one function per node of the
graph (each calling a few more: Numba's own implementations of numpy
functions, string formatting for error messages): it reads and types each,
and turns it into LLVM code.  Then it compiles one function for the whole
graph, which links all of them in; only that one is optimised as a whole and
made into machine code (network3/linker.py).  Nodes with the same function (the same PyTensor cache
key) share one compilation.  The table gives, per kind of node, how many
nodes there are and the seconds their compilation took (everything compiled
on their behalf included: a helper of Numba's is counted with the first node
that needs it), and the graph function's own share.

    python scripts/compile_profile.py --net dbl_conv
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time


def profile(net):
    """In this process (whose compile cache is empty): the compile times."""
    import numba.core.dispatcher as dispatcher

    compile_core = dispatcher._FunctionCompiler._compile_core
    depth = [0]
    nodes = []  # (name, seconds) of each node's compilation, in order
    total = [0.0]

    def timed(self, args, return_type):
        start = time.perf_counter()
        depth[0] += 1
        try:
            return compile_core(self, args, return_type)
        finally:
            depth[0] -= 1
            seconds = time.perf_counter() - start
            if depth[0] == 0:
                total[0] += seconds
            elif depth[0] == 1:  # depth 0: the graph function (network3's
                # linker.py), 1: a node's function, 2 and on: their callees
                nodes.append((self.py_func.__name__, seconds))

    dispatcher._FunctionCompiler._compile_core = timed
    sys.path.insert(0, os.path.dirname(__file__))
    import benchmark

    start = time.perf_counter()
    # builds and compiles the network, then runs the first step and the
    # benchmark's 100 warm-up steps (wall_s includes them; numba_s does not)
    benchmark.time_network3(net, steps=1, backend="numba")
    return {"wall_s": time.perf_counter() - start, "numba_s": total[0], "nodes": nodes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default="dbl_conv",
                        help="a network of scripts/benchmark.py")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(profile(args.net)))
        return
    with tempfile.TemporaryDirectory(prefix="network3-compile-") as cache:
        env = dict(os.environ, PYTENSOR_FLAGS=f"base_compiledir={cache}",
                   OPENBLAS_NUM_THREADS="1")
        out = subprocess.run([sys.executable, __file__, "--worker", "--net", args.net],
                             capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    kinds = collections.defaultdict(lambda: [0, 0.0])
    for name, seconds in result["nodes"]:
        kinds[name][0] += 1
        kinds[name][1] += seconds
    in_nodes = sum(seconds for _, seconds in result["nodes"])
    print(f"# {args.net}: first SGD step with an empty cache; Numba compiled "
          f"for {result['numba_s']:.1f} s (graph, compile and 100 steps: "
          f"{result['wall_s']:.1f} s)")
    print("| node's function | nodes | compile s |\n| --- | --- | --- |")
    for name, (count, seconds) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name} | {count} | {seconds:.2f} |")
    print(f"| the graph function (links all the above, optimises them and "
          f"makes the machine code) | 1 | "
          f"{result['numba_s'] - in_nodes:.2f} |")


if __name__ == "__main__":
    main()
