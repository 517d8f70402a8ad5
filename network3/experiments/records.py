"""The record store: one JSON line per finished run in its results file
(``results/<experiment>.jsonl``).  Only the driver writes records:
``append_record`` appends a line under a file lock, flushed and fsynced,
and never a second record of the same run; ``read_records`` skips a line
cut off by a crash.  A record also says where and with what it ran
(``machine``, ``versions``, ``commit``, ``accelerator``), and keeps the labels its net
gave the validation and test images, so that ensembles are voted from
records (``vote_records``, ``ensemble_from_records``)."""

import json
import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from .. import backend
from ..ensemble import EnsembleResult, vote
from .runs import record_key

try:
    import fcntl  # POSIX: results files are appended under an exclusive lock
except ImportError:  # Windows: one driver per results file
    fcntl = None


def encode_labels(labels):
    """Labels 0-9 as a string of digits (10,000 labels: 10,000 characters);
    other labels as a list."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        return labels.tolist()
    return (labels.astype(np.uint8) + ord("0")).tobytes().decode("ascii")


def decode_labels(value):
    """The inverse of ``encode_labels``: an int64 array."""
    if isinstance(value, str):
        return np.frombuffer(value.encode("ascii"), np.uint8).astype(np.int64) - ord("0")
    return np.asarray(value, dtype=np.int64)


def read_records(path):
    """The records of a results file (JSON Lines).  A line that is not JSON
    (a write cut off by a crash) is skipped, with a note on stderr."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"{path}:{number}: skipping a line that is not a JSON record",
                  file=sys.stderr)
    return records


def recorded_keys(path):
    """The run keys of the records in the results file ``path``."""
    return {key for key in map(record_key, read_records(path)) if key}


def append_record(path, record, force=False):
    """Append ``record`` to the results file ``path`` as one line, under an
    exclusive lock, flushed and fsynced.  Returns False, writing nothing,
    when the file already has this record (same ``run_id``: a result
    delivered twice) or, unless ``force``, a record of the same run key."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record) + "\n"
    key, run_id = record_key(record), record.get("run_id")
    with open(path, "a+") as f:
        if fcntl:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            text = f.read()
            for existing in text.splitlines():
                try:
                    other = json.loads(existing)
                except json.JSONDecodeError:
                    continue
                if (run_id and other.get("run_id") == run_id) or \
                        (not force and record_key(other) == key):
                    return False
            if text and not text.endswith("\n"):
                line = "\n" + line  # after a line cut off by a crash
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            if fcntl:
                fcntl.flock(f, fcntl.LOCK_UN)
    return True


def vote_records(records, labels):
    """The plurality vote (``network3.ensemble.vote``) of the test labels
    predicted by ``records`` (those that recorded them), scored against the
    true ``labels``.  Returns (EnsembleResult, members that voted)."""
    labels = np.asarray(labels)
    members = [r for r in records if r.get("test_predictions") is not None
               and len(decode_labels(r["test_predictions"])) == len(labels)]
    if not members:
        return None, []
    # the book's nets in the order they were trained (seeds 0, 1, ...): its
    # vote breaks ties by that order, and Dask records runs as they finish
    members.sort(key=lambda r: r.get("seed", 0))
    voted = vote(np.stack([decode_labels(r["test_predictions"]) for r in members]))
    wrong = np.flatnonzero(voted != labels)
    return EnsembleResult(1.0 - len(wrong) / len(labels), wrong, voted), members


def ensemble_from_records(path, members, labels):
    """The vote of the ensemble members ``members`` (runs) that have records
    in the results file ``path``: (EnsembleResult, records that voted)."""
    keys = {run.key for run in members}
    records = [r for r in read_records(path) if record_key(r) in keys]
    latest = {record_key(r): r for r in records}  # a forced rerun replaces
    return vote_records(list(latest.values()), labels)


def machine():
    """The CPU model and the cores this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {cpus} cores"


def versions():
    """The versions of what decides a run's numbers: network3, PyTensor,
    Numba, numpy and Python."""
    import network3
    found = {"network3": network3.__version__}  # the code imported, installed or not
    for name in ("pytensor", "numba", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def commit(root=None):
    """The git commit of the network3 code that ran (in the checkout at
    ``root``, default the one this network3 was imported from), with
    "+changed" when its package or scripts differ from that commit; None
    where network3 is not a git checkout (an installed copy)."""
    if root is None:
        import network3
        root = Path(network3.__file__).resolve().parent.parent
    root = Path(root).resolve()

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=30)
    try:
        top = git("rev-parse", "--show-toplevel")
        # a network3 installed inside some other repository is not that repository's
        if top.returncode or Path(top.stdout.strip()).resolve() != root:
            return None
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--",
                      "network3", "scripts")
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode or changed.returncode:
        return None
    return head.stdout.strip() + ("+changed" if changed.stdout.strip() else "")


def accelerator():
    """Whether network3's Numba accelerator ran: "on", "off", "failed:
    <reason>", "not loaded" (nothing compiled with it), or "not used" on
    another backend.  Read through backend's public switch, and never an
    error: a record must be written even if that switch changes."""
    try:
        if backend.backend() not in (None, "numba"):
            return "not used"
        return str(backend.accelerator_status())
    except Exception as error:  # noqa: BLE001  (a record is worth more than this field)
        return f"unknown ({type(error).__name__})"
