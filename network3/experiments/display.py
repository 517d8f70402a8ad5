"""The terminal display of a command's runs: one line per run while they
go (queued, started on a worker, epoch k of n, done, failed), redrawn in
place on a terminal, and a summary table at the end."""

import threading


class Display:
    """One line per run: live (redrawn in place) on a terminal, otherwise a
    new line at each change."""

    def __init__(self, outcomes, stream, live=None):
        self.outcomes, self.stream = outcomes, stream
        # Dask's progress events arrive on its own thread, results on ours
        self.lock = threading.Lock()
        self.live = stream.isatty() if live is None else live
        self.text = {o.run.key: "queued" for o in outcomes}
        self.drawn = 0
        if self.live:
            self.draw()
        else:
            for o in outcomes:
                print(f"{o.run.label()}: queued", file=stream)

    def update(self, outcome, text):
        with self.lock:
            if self.text[outcome.run.key] == text:
                return
            self.text[outcome.run.key] = text
            if self.live:
                self.draw()
            else:
                print(f"{outcome.run.label()}: {text}", file=self.stream, flush=True)

    def draw(self):
        width = max(len(o.run.label()) for o in self.outcomes)
        lines = [f"{o.run.label():<{width}}  {self.text[o.run.key]}" for o in self.outcomes]
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.stream.flush()
        self.drawn = len(lines)


def _percent(value):
    return "-" if value is None else f"{value:.2%}"


def _resumed(record):
    epoch = (record or {}).get("resumed_from")
    return "" if epoch is None else f", resumed at epoch {epoch}"


def progress_text(outcome, message):
    """A worker's progress message ("started" or "epoch") as a run's line."""
    if message["state"] == "started":
        again = f" (attempt {outcome.attempts})" if outcome.attempts > 1 else ""
        return f"started on {message['worker']}{again}"
    best = message.get("best_validation")
    return (f"epoch {message['epoch'] + 1} of {message['epochs']}"
            + ("" if best is None else f", best validation {best:.2%}"))


def done_text(outcome):
    r = outcome.record
    return (f"done: test {_percent(r['test_accuracy'])} (best validation "
            f"{_percent(r['best_validation_accuracy'])}), "
            f"{r['wall_seconds'] / 60:.1f} min{_resumed(r)}{outcome.detail}")


def print_summary(outcomes, seconds, stream):
    """The table of all runs at the end, then the errors of failed runs."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    print(f"\nSummary: {counts['done']} done, {counts['skipped']} skipped "
          f"(already recorded), {counts['failed']} failed, in {seconds / 60:.1f} min",
          file=stream)
    rows = [("run", "status", "test", "best validation", "minutes", "where")]
    for o in outcomes:
        r = o.record or {}
        rows.append((o.run.label(), o.status, _percent(r.get("test_accuracy")),
                     _percent(r.get("best_validation_accuracy")),
                     f"{r['wall_seconds'] / 60:.1f}" if r else "-",
                     o.where + (f" ({o.attempts} attempts)" if o.attempts > 1 else "")
                     + _resumed(o.record)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=stream)
    for o in outcomes:
        if o.status == "failed":
            print(f"\n{o.run.label()} failed:\n{o.traceback or o.error}", file=stream)
