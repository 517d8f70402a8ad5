"""results_table.py: write RESULTS.md from the results files of scripts/conv.py.

Every figure in the table is read from ``results/*.jsonl`` (one record per
training run, written by scripts/conv.py as the run finishes), never typed
in.  A run is counted once: of several records of one run key (a run
trained again with ``--force``) the last is taken.  Runs of the same
experiment with the same settings (data, epochs, eta, lmbda, init, FC
width, training-set size, augmentation; a --set sweep gives one row per
combination) are grouped; as in the book, the group's figure is the best
test accuracy (at the best validation epoch) of its runs.  The ensemble's
vote is taken from its members' recorded test predictions, and its row says
how many members voted.  RESULTS.md has every group; the README's short
table, beside the book's figures, only those at the book's scale (quick
runs, with fewer epochs or training images than the book's, are left out)
and, of beyond's settings, the one chosen on the validation set (its best
run's validation accuracy is the highest; settings with a vote first).

    python scripts/results_table.py      # writes RESULTS.md and README's short table
"""

import argparse
from collections import defaultdict
from pathlib import Path

from network3.experiments import (
    EXPERIMENTS,
    FULL_SIZE,
    read_records,
    record_key,
    record_settings,
    vote_records,
)
from network3.experiments.book import AUGMENT, INIT

ROOT = Path(__file__).resolve().parent.parent

# The book's figures (chapter 6; CONTRACT.md section 4), keyed by
# experiment and, for the expanded-data rows, the FC width.
BOOK = {("shallow", None): "97.80%", ("basic_conv", None): "98.78%",
        ("omit_FC", None): "(exercise)", ("dbl_conv", None): "99.06%",
        ("dbl_conv_tanh", None): "(problem)",
        ("regularized_dbl_conv", None): "(not reported)",
        ("dbl_conv_relu", None): "99.23%",
        ("expanded_data", 100): "99.37%", ("expanded_data", 300): "99.46%",
        ("expanded_data", 1000): "99.43%",
        ("expanded_data_double_fc", 100): "99.43%",
        ("expanded_data_double_fc", 300): "99.48%",
        ("expanded_data_double_fc", 1000): "99.47%",
        ("double_fc_dropout", None): "99.60%",
        ("ensemble", None): "99.60% (each member)",
        ("ensemble_vote", None): "99.67% (33 errors)",
        # beyond the book: the targets, the best of that era (Ciresan et al.)
        ("beyond", None): "(target 99.70%)",
        ("beyond_vote", None): "(target 99.77%)"}
ORDER = [k[0] for k in BOOK]


def fc_width(record):
    if not record["experiment"].startswith("expanded_data"):
        return None
    return record["config"]["layers"][2]["n_out"]


def load_records(folder):
    """The run records of the results files in ``folder``, one per run key
    (the last: a run trained again with --force replaces the earlier); a
    line that is not JSON (a write cut off by a crash) is skipped, with a
    note."""
    runs = {}
    for path in sorted(Path(folder).glob("*.jsonl")):
        for record in read_records(path):
            key = record_key(record)
            if key is not None:  # a conv.py run
                runs.pop(key, None)  # (keeps the order of the last records)
                runs[key] = record
    return list(runs.values())


def quick(experiment, settings):
    """Whether a run has fewer epochs or training images than the book's."""
    if experiment not in EXPERIMENTS:
        return False
    book_data, book_epochs = EXPERIMENTS[experiment][:2]
    return (settings["epochs"] < book_epochs or settings["train_size"] is not None
            or FULL_SIZE[settings["data"]] < FULL_SIZE[book_data])


def groups_of(records):
    """Runs of the same experiment with the same settings, in table order."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["experiment"], tuple(sorted(record_settings(r).items())))].append(r)

    def order(key):
        s = dict(key[1])
        return (ORDER.index(key[0]) if key[0] in ORDER else 99, s["n"] or 0,
                s["init"] != "book", -s["epochs"], s["eta"], s["lmbda"],
                s["train_size"] or 0, s["data"], s["augment"] or "", s["momentum"] or 0,
                s["arch"] or "")
    return [(key[0], dict(key[1]), groups[key]) for key in sorted(groups, key=order)]


def _percent(value):
    return "-" if value is None else f"{value:.2%}"


def table(records, test_labels=None, full=True):
    """The results table (Markdown).  ``test_labels``: MNIST's test labels,
    or a function returning them, for the ensemble's vote; the vote row
    says how many members voted.  ``full=False``: the README's short form
    (experiment, figures, runs, epochs)."""
    if full:
        rows = ["| experiment | book | network3 (best run) | runs: test accuracy | "
                "epochs | eta, lmbda | init | training images | wall time per run | "
                "machine | command |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    else:
        rows = ["| experiment | book | network3 (best run) | runs: test accuracy | epochs |",
                "| --- | --- | --- | --- | --- |"]
    groups = groups_of(records)
    if not full:
        chosen = _chosen_beyond(groups)
        groups = [g for g in groups if g[0] != "beyond" or g is chosen]
    for experiment, s, runs in groups:
        if not full and quick(experiment, s):
            continue  # not beside the book's figures: RESULTS.md has it
        width, augment = fc_width(runs[0]), s["augment"]
        best = max(runs, key=lambda r: r["test_accuracy"] or 0)
        name = experiment + (f" (FC {width})" if width else "") + \
            (f", {s['arch']} network" if s["arch"] else "") + \
            (f", augmented: {augment}" if augment != AUGMENT.get(experiment) else "") + \
            (f", momentum {s['momentum']}" if s["momentum"] else "")
        if not full and s["init"] != INIT.get(experiment, "book"):  # no init column
            name += f", {s['init']} init"
        each = ", ".join(_percent(r["test_accuracy"]) for r in runs)
        wall = sum(r["wall_seconds"] for r in runs) / len(runs)
        command = best.get("command") or "(from the REPL)"
        train_size = runs[0]["config"]["train_size"]
        columns = (f"{s['epochs']} | {s['eta']}, {s['lmbda']} | {s['init']} | "
                   f"{train_size:,} | {wall / 60:.1f} min | {best['machine']} | "
                   f"`{command}` |") if full else f"{s['epochs']} |"
        rows.append(f"| {name} | {BOOK.get((experiment, width), '')} | "
                    f"**{_percent(best['test_accuracy'])}** | {len(runs)}: {each} | "
                    + columns)
        voting = experiment == "ensemble" or (experiment == "beyond" and len(runs) > 1)
        if voting and test_labels is not None:
            rows.append(vote_row(experiment, runs, test_labels, columns))
    return "\n".join(rows)


def _chosen_beyond(groups):
    """Of beyond's groups at full scale (one per setting tried), the one
    whose best run has the highest validation accuracy (ties: the first in
    table order, the most epochs).  Groups of several runs come first: the
    README shows a vote beside the single networks, and one long run must
    not hide it."""
    tried = [g for g in groups if g[0] == "beyond" and not quick(g[0], g[1])]
    tried = [g for g in tried if len(g[2]) > 1] or tried
    if not tried:
        return None
    return max(tried, key=lambda g: max(r["best_validation_accuracy"] or 0 for r in g[2]))


def vote_row(experiment, runs, test_labels, columns):
    """The vote of ``experiment``'s runs (the ensemble's, or beyond's), from
    their recorded test predictions."""
    labels = test_labels() if callable(test_labels) else test_labels
    result, members = vote_records(runs, labels)
    book = BOOK[(f"{experiment}_vote", None)]
    if result is None:
        return (f"| {experiment} vote | {book} | (no member recorded its predictions) | "
                f"0 members | " + columns)
    seeds = ", ".join(str(r["seed"]) for r in members)
    return (f"| {experiment} vote ({len(members)} members) | {book} | "
            f"**{result.accuracy:.2%}** ({len(result.misclassified)} errors) | "
            f"{len(members)} members voted (seeds {seeds}) | " + columns)


def mnist_test_labels():
    import network3
    return network3.data.load_data()[2][1]


HEADER = """# Reproduced results

The book's accuracy table (chapter 6) next to network3's measured figures.
Test accuracy at the epoch of best validation accuracy; the book reports the
best of 3 runs.  Generated by `python scripts/results_table.py` from the
results files in `results/`, which `scripts/conv.py` writes as each run
finishes; each row names the command that produced it.  Rows with fewer
epochs or runs than the book say so in their columns; the README's table
leaves out the runs with fewer epochs or training images than the book's.

"""


START, END = "<!-- results:start -->", "<!-- results:end -->"


def main(argv=None):
    argparse.ArgumentParser(
        description="Write RESULTS.md and the README's results table from the "
        "records in results/*.jsonl (the ensemble's vote needs MNIST's test "
        "labels).").parse_args(argv)
    records = load_records(ROOT / "results")
    rows = table(records, mnist_test_labels)
    text = HEADER + rows + "\n"
    (ROOT / "RESULTS.md").write_text(text)
    # the short form in the README, between its markers
    readme = ROOT / "README.md"
    content = readme.read_text()
    if START in content and END in content:
        before, rest = content.split(START, 1)
        after = rest.split(END, 1)[1]
        short = table(records, mnist_test_labels, full=False)
        readme.write_text(f"{before}{START}\n{short}\n{END}{after}")
    print(text)


if __name__ == "__main__":
    main()
