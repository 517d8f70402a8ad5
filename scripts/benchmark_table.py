"""benchmark_table.py: the README's performance table, from the runs that
``scripts/benchmark.py --record results/benchmark.jsonl`` recorded.

Takes the runs that measured the same network3 package as the newest run
(its commits' ``network3/`` folder, the same git tree): one line per run
(its hour, Python, load and speed-up per network), then the latest run of
each Python in full.  Writes them between the README's performance markers, or prints
them with ``--print``:

    python scripts/benchmark_table.py
"""

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- performance:start -->", "<!-- performance:end -->"
STEPS_PER_EPOCH = 5000  # 50,000 images at mini-batch 10


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _commit(run):
    return run["commit"].split()[0]


def _package(run):
    """What the run measured: the git tree of network3/ at its commit (runs
    of commits that changed other files measured the same package), or the
    commit as recorded where git cannot tell (or the folder had changes)."""
    if "as committed" not in run["commit"]:
        return run["commit"]
    found = subprocess.run(["git", "rev-parse", f"{_commit(run)}:network3"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return found or run["commit"]


def _python(run):
    """'3.11' from the record's 'Python 3.11.7, PyTensor ...'."""
    return ".".join(run["network3"].split(",")[0].split()[1].split(".")[:2])


def _x(value):
    return "-" if value is None else f"{value:.2f}x"


def _epoch(ms):
    return "-" if ms is None else f"{ms * STEPS_PER_EPOCH / 1e3:.1f}"


def _s(value):
    return "-" if value is None else f"{value:.1f} s"


def table(runs):
    """The markdown between the README's markers."""
    if not runs:
        raise SystemExit("no benchmark runs recorded")
    package = _package(runs[-1])
    runs = [r for r in runs if _package(r) == package]
    commits = ", ".join(dict.fromkeys(_commit(r) for r in runs))
    nets = list(runs[-1]["nets"])
    latest = {}
    for run in runs:
        latest[_python(run)] = run
    pythons = sorted(latest, key=lambda v: tuple(map(int, v.split("."))))
    torch = runs[-1]["torch"].split(" (")[0].split(";")[0]  # "torch 2.13.0+cpu on Python 3.11.7"
    lines = [
        "`python scripts/benchmark.py --record results/benchmark.jsonl` trains each "
        "network at the book's settings against PyTorch as its users write it "
        "(`torch.optim.SGD(foreach=True)`, the L2 term as `weight_decay` on the "
        "weights, non-inverted dropout, flipped kernels, the faster of 1 thread and "
        "its default), interleaved in fresh processes, fastest of "
        f"{runs[-1]['repeats']}, on a shared {runs[-1]['cores']}-core machine "
        f"({runs[-1]['cpu']}); PyTorch: {torch}. "
        "`python scripts/benchmark_table.py` wrote this from the runs of commits "
        f"{commits} (the same network3 package); results/benchmark.md has each "
        "run's full output (spreads, the JAX backend, the floor).", "",
        "Speed-up per epoch over PyTorch, each run:", "",
        "| run | Python | load (1 min) | " + " | ".join(nets) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in nets) + " |"]
    for run in runs:
        lines.append(f"| {run['date']} to {run['end'].split()[0]} | {_python(run)} | "
                     f"{run['load_range']} | "
                     + " | ".join(_x(run["nets"].get(n, {}).get("speedup")) for n in nets)
                     + " |")
    slash = " / ".join(pythons)
    lines += ["", f"The latest run on each Python ({slash}); an epoch is 50,000 images "
              "at mini-batch 10:", "",
              f"| network | network3 s/epoch, {slash} | PyTorch s/epoch | "
              f"speed-up, {slash} | first call, empty cache / cache filled |",
              "| --- | --- | --- | --- | --- |"]
    for name in nets:
        cells = [latest[v]["nets"].get(name, {}) for v in pythons]
        # per Python, in the columns' order (one figure where they agree)
        torch_epochs = list(dict.fromkeys(_epoch(c.get("torch_ms")) for c in cells))
        firsts = " / ".join(f"{_s(c.get('cold_s'))}, {_s(c.get('cached_s'))}" for c in cells)
        lines.append(
            f"| {name} ({cells[-1].get('settings', '')}) | "
            f"{' / '.join(_epoch(c.get('network3_ms')) for c in cells)} | "
            f"{' / '.join(torch_epochs)} | "
            f"{' / '.join(_x(c.get('speedup')) for c in cells)} | {firsts} |")
    lines += ["", "[docs/performance.md](docs/performance.md) has what made the "
              "difference and the commands."]
    return "\n".join(lines) + "\n"


def write_readme(text, readme):
    content = readme.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}{END}{tail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=str(ROOT / "results" / "benchmark.jsonl"),
                        help="the recorded runs (default: results/benchmark.jsonl)")
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--print", action="store_true",
                        help="print the table instead of writing the README")
    args = parser.parse_args(argv)
    text = table(load(args.runs))
    if args.print:
        print(text, end="")
    else:
        write_readme(text, Path(args.readme))
        print(f"wrote {args.readme}")


if __name__ == "__main__":
    main()
