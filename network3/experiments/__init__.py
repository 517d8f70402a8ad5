"""The chapter's experiments as runs that are recorded, resumable, and run
in parallel on Dask.  ``scripts/conv.py`` is the command line over this
package; each module does one job:

* ``book``: the book's experiments (``EXPERIMENTS``: data, epochs, eta,
  lmbda of each; ``build``: each network's layers; ``BOOK``: the book's
  ``run_experiments``).
* ``runs``: runs and their keys (``settings``, ``plan``, ``parse_set``,
  ``Run``), every setting checked before anything runs.
* ``records``: the record store (``append_record``, ``read_records``), and
  the ensemble's vote from records.
* ``training``: one run (``train``) and its data, read once per process
  (``load``).
* ``driver``: ``execute``, which skips recorded runs, trains the rest here
  or on Dask, writes the records and removes each run's checkpoint.
* ``cluster`` and ``workers``: the Dask side (Dask is imported only when
  it is used).
* ``display``: the live lines and the summary table.
"""

from .book import (  # noqa: F401
    BOOK,
    BOOK_RUNS,
    ENSEMBLE_MEMBERS,
    EXPERIMENTS,
    FULL_SIZE,
    WIDTH_EXPERIMENTS,
    build,
    conv1,
    conv2,
    fc,
    mini_batch_size,
)
from .cluster import (  # noqa: F401  (dask.distributed is imported only when used)
    ClusterError,
    MissingDask,
    local_cluster,
    worker_cache_dir,
    worker_env,
)
from .display import print_summary  # noqa: F401
from .driver import Outcome, execute  # noqa: F401
from .records import (  # noqa: F401
    accelerator,
    append_record,
    commit,
    decode_labels,
    encode_labels,
    ensemble_from_records,
    machine,
    read_records,
    recorded_keys,
    versions,
    vote_records,
)
from .runs import (  # noqa: F401
    SETTINGS,
    Run,
    digest,
    parse_set,
    plan,
    record_key,
    record_settings,
    run_key,
    settings,
)
from .training import data_file, load  # noqa: F401

