"""data.py: MNIST for network3, in the book's ``mnist.pkl.gz`` layout.

``load_data_shared()`` returns the book's three ``(x, y)`` pairs.  The book's
file is a gzipped pickle of ``(training, validation, test)``, each ``(x, y)``
with x float32 (N, 784) pixel values k/256 and y int64 labels: the first
50,000 MNIST training images, the last 10,000, and the 10,000 test images.
The file the book's ``expand_mnist.py`` writes (pickle protocol 0, its
training x and y as lists of images and of labels) loads too.

Where the book shipped that file, network3 builds it from the four original
MNIST files (IDX format), verified against their known SHA-256 sums, taken
from a local folder or downloaded from the public mirrors:

    python -m network3 data                     # download, verify, build
    python -m network3 data --idx-dir DIR       # build from local IDX files

Pickles can run code when loaded, so network3 reads them with an unpickler
that admits only the numpy arrays the format holds.  Files are written to a
temporary name and renamed, so an interrupted build leaves no half file.
"""

import contextlib
import glob
import gzip
import hashlib
import os
import pickle
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytensor

from .backend import floatX

# SHA-256 of the *uncompressed* IDX files (the mirrors' gzip files differ in
# compression, the content does not).
MNIST_FILES = {
    "train-images-idx3-ubyte":
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte":
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte":
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte":
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
BUILD_HINT = "run `python -m network3 data` to download and build it"


class DataError(ValueError):
    """A data file is missing, damaged or not in the expected format."""


#### Where the data lives
def data_dir():
    """Folder for network3's data files: $NETWORK3_DATA, else the project's
    ``data/`` folder in a source checkout, else ~/.cache/network3."""
    if os.environ.get("NETWORK3_DATA"):
        return Path(os.environ["NETWORK3_DATA"])
    project = Path(__file__).resolve().parent.parent
    if (project / "pyproject.toml").exists():
        return project / "data"
    return Path.home() / ".cache" / "network3"


def default_path():
    """The book's ``../data/mnist.pkl.gz`` when it exists (running from
    ``scripts/``, as the book did), else ``mnist.pkl.gz`` in ``data_dir()``."""
    book = Path("..") / "data" / "mnist.pkl.gz"
    return book if book.exists() else data_dir() / "mnist.pkl.gz"


#### Load the MNIST data
def load_data(filename=None):
    """The book's ``(training, validation, test)`` tuple of numpy ``(x, y)``
    pairs.  With no ``filename``, finds (or, the first time, builds)
    ``mnist.pkl.gz``."""
    if filename is None:
        filename = default_path()
        if not Path(filename).exists():
            print(f"network3: {filename} not found; building it from the "
                  "MNIST files", file=sys.stderr)
            build_mnist_pkl(filename)
    path = Path(filename)
    if not path.exists():
        hint = ("run `python scripts/expand_mnist.py` to build it"
                if "expanded" in path.name else BUILD_HINT)
        raise FileNotFoundError(f"{path}: no such data file; {hint}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        raise DataError(f"{path}: not a gzip file (it starts with {magic!r}); "
                        "expected a gzipped pickle like the book's mnist.pkl.gz")
    try:
        with gzip.open(path, "rb") as f:
            data = SafeUnpickler(f, encoding="latin1").load()
            f.read()  # to the end of the stream, where gzip checks its CRC
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    except (EOFError, gzip.BadGzipFile, zlib_error()) as err:
        raise DataError(
            f"{path}: damaged or truncated gzip file ({err}): delete it and "
            f"{BUILD_HINT}") from None
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: not a network3 data pickle: {err}") from None
    except Exception as err:  # whatever a damaged pickle makes numpy raise
        raise DataError(f"{path}: damaged data file ({type(err).__name__}: "
                        f"{err}): delete it and {BUILD_HINT}") from None
    return _check_layout(data, path)


def load_data_shared(filename=None):
    """The book's data as three ``(x, y)`` pairs of symbolic variables: x a
    shared float matrix (N, 784), y an int32 vector.  ``x.get_value()``,
    ``x.eval()`` and ``y.eval()`` give numpy arrays."""
    def shared(data):
        """Place the data into shared variables, so a compiled function can
        slice mini-batches out of them without copying them in each call."""
        shared_x = pytensor.shared(
            np.asarray(data[0], dtype=floatX()), borrow=True)
        shared_y = pytensor.shared(np.asarray(data[1], dtype="int32"), borrow=True)
        return shared_x, shared_y
    return [shared(pair) for pair in load_data(filename)]


def size(data):
    "Return the size of the dataset `data`."
    return len(_values(data)[0])


def subset(data, n):
    """The first ``n`` examples of the ``(x, y)`` pair ``data``, as a new
    pair of shared variables (for a quick run on part of the data)."""
    x, y = _values(data)
    return (pytensor.shared(np.asarray(x[:n], dtype=floatX()), borrow=True),
            pytensor.shared(np.asarray(y[:n], dtype="int32"), borrow=True))


def as_array(v):
    """The numpy value of a data array: shared variable, symbolic expression
    (such as the book's ``T.cast(shared_y, "int32")``) or array."""
    if hasattr(v, "get_value"):
        return v.get_value(borrow=True)
    if isinstance(v, pytensor.graph.basic.Variable):
        return v.eval()
    return np.asarray(v)


def _values(data):
    """numpy arrays of an (x, y) pair."""
    return as_array(data[0]), as_array(data[1])


def zlib_error():
    import zlib
    return zlib.error


def _check_layout(data, path):
    if not (isinstance(data, (tuple, list)) and len(data) == 3):
        raise DataError(f"{path}: expected a (training, validation, test) "
                        f"tuple, found {type(data).__name__}")
    splits = []
    for name, pair in zip(("training", "validation", "test"), data):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise DataError(f"{path}: {name} data is not an (x, y) pair")
        x, y = (_as_array(value, f"{path}: {name} {which}")
                for which, value in zip("xy", pair))
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{path}: {name} x has shape {x.shape} and y "
                            f"{y.shape}; expected (N, pixels) and (N,)")
        if x.dtype.kind != "f" or y.dtype.kind not in "iu":
            raise DataError(f"{path}: {name} x must be float and y integer, "
                            f"found {x.dtype} and {y.dtype}")
        splits.append((x, y))
    return tuple(splits)


def _as_array(value, what):
    """``value`` as an array: a numpy array, or a list of images (arrays) or
    of labels (numbers), as the book's ``expand_mnist.py`` writes its
    training set."""
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, list):
        raise DataError(f"{what} must be a numpy array or a list, found "
                        f"{type(value).__name__}")
    kinds = (np.ndarray, np.number, int, float)
    bad = next((v for v in value if not isinstance(v, kinds)), None)
    if bad is not None:
        raise DataError(f"{what} is a list holding a {type(bad).__name__}; "
                        "expected images (numpy arrays) or labels (numbers)")
    try:
        return np.array(value)
    except (ValueError, TypeError) as err:  # images of different sizes
        raise DataError(f"{what} is a list that is not one array: {err}") from None


class SafeUnpickler(pickle._Unpickler):
    """Admits only what a data pickle holds: numpy arrays (with their
    dtypes), tuples and lists.  Anything else, such as a pickle crafted to
    run a command when loaded, is refused before it is touched.

    It is Python's own unpickler (the pure-Python one, so that one opcode
    can be checked): a dtype's state is checked before numpy sees it, since
    numpy crashes the interpreter on some malformed states."""

    def load_build(self):
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):
            _check_dtype_state(state)
        pickle._Unpickler.load_build(self)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module, name):
        # pickles made with numpy < 2 (and the book's Python 2 pickle) name
        # numpy.core, which numpy 2 renamed numpy._core
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a data file holds only "
                "numpy arrays (this pickle may be malicious)")
        return super().find_class(module, name)


def _check_dtype_state(state):
    """The state numpy pickles for a plain (non-structured) dtype:
    (version, byte order, None, None, None, -1, -1, flags[, metadata])."""
    ok = (isinstance(state, tuple) and len(state) in (8, 9)
          and state[0] in (3, 4) and state[1] in ("<", ">", "|", "=")
          and state[2:5] == (None, None, None) and state[5:7] == (-1, -1)
          and isinstance(state[7], int) and 0 <= state[7] < 1024
          and (len(state) == 8 or state[8] is None))
    if not ok:
        raise DataError(f"unsupported or damaged dtype in the pickle: {state!r:.80}")


#### Build mnist.pkl.gz from the original MNIST files
def read_idx(path):
    """A numpy uint8 array from an IDX file (gzipped or not)."""
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big")
                  for k in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says shape {shape} "
                        f"({header + int(np.prod(shape))} bytes) but the file "
                        f"has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_maybe_gzip(path):
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib_error()) as err:
            raise DataError(f"{path}: damaged gzip file ({err})") from None
    return data


def find_idx_file(name, idx_dir):
    """``idx_dir/name`` or ``idx_dir/name.gz``, whichever exists."""
    for candidate in (Path(idx_dir) / (name + ".gz"), Path(idx_dir) / name):
        if candidate.exists():
            return candidate
    return None


def verify_idx(path, name):
    """Raise ``DataError`` unless the content of ``path`` is the genuine
    MNIST file ``name``."""
    digest = hashlib.sha256(_read_maybe_gzip(Path(path))).hexdigest()
    if digest != MNIST_FILES[name]:
        raise DataError(
            f"{path}: SHA-256 {digest} does not match MNIST's {name} "
            f"({MNIST_FILES[name]}); the file is damaged or not MNIST: delete "
            "it and download it again")


def download_mnist(dest_dir, mirrors=MIRRORS, timeout=30):
    """Download the four MNIST files into ``dest_dir`` from the first
    mirror that answers, verifying each; skips files already there."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        target = dest_dir / (name + ".gz")
        if target.exists():
            verify_idx(target, name)
            continue
        errors = []
        for mirror in mirrors:
            url = mirror + name + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    payload = response.read()
            except (urllib.error.URLError, OSError) as err:
                errors.append(f"{url}: {getattr(err, 'reason', err)}")
                continue
            try:
                with atomic_file(target) as tmp:  # renamed into place once verified
                    tmp.write_bytes(payload)
                    verify_idx(tmp, name)
            except DataError as err:
                errors.append(f"{url}: {err}")
                continue
            print(f"network3: downloaded {url}", file=sys.stderr)
            break
        else:
            raise DataError(
                f"could not download {name}.gz from any mirror (offline?):\n  "
                + "\n  ".join(errors)
                + f"\nPut the four MNIST files in {dest_dir} and run "
                "`python -m network3 data --idx-dir DIR`")
    return dest_dir


def mnist_arrays(idx_dir):
    """The book's three splits, as numpy arrays, from verified IDX files."""
    arrays = {}
    for name in MNIST_FILES:
        path = find_idx_file(name, idx_dir)
        if path is None:
            raise FileNotFoundError(
                f"{Path(idx_dir) / (name + '.gz')}: missing MNIST file; "
                f"{BUILD_HINT}")
        verify_idx(path, name)
        arrays[name] = read_idx(path)
    # pixel value k -> k/256, as in the book's file (maximum 255/256)
    train_x = arrays["train-images-idx3-ubyte"].reshape(-1, 784) / np.float32(256)
    train_y = arrays["train-labels-idx1-ubyte"].astype(np.int64)
    test_x = arrays["t10k-images-idx3-ubyte"].reshape(-1, 784) / np.float32(256)
    test_y = arrays["t10k-labels-idx1-ubyte"].astype(np.int64)
    return ((train_x[:50000], train_y[:50000]),
            (train_x[50000:], train_y[50000:]),
            (test_x, test_y))


def save_data(data, filename):
    """Write ``(training, validation, test)`` as a gzipped pickle, via a
    temporary file renamed into place."""
    path = Path(filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        # streamed through gzip: no second in-memory copy of the arrays
        with gzip.open(tmp, "wb", compresslevel=4) as f:
            pickle.dump(tuple(tuple(pair) for pair in data), f, protocol=4)


@contextlib.contextmanager
def atomic_file(path):
    """A temporary name beside ``path`` to write to; renamed to ``path``
    when the block ends without an error, so a reader never sees half a
    file.  The name is this writer's own: two processes building the same
    file (Dask workers that both lack ``mnist.pkl.gz``) each write a whole
    file, and the last rename wins.  The file is flushed to disk (fsync)
    before the rename, and the folder after it, so that a crash leaves the
    old file or the new one, never an empty one.  On an error the
    temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # however the block wrote it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def leftover_parts(path):
    """The temporary files that ``atomic_file`` left beside ``path`` when
    their writers were killed mid-write."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob.escape(path.name)}.*.part"))


def _fsync_folder(folder):
    # the rename itself is durable once the folder is synced (POSIX only:
    # Windows cannot open a folder)
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path, payload):
    """Write ``payload`` (bytes) to ``path`` through ``atomic_file``."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(payload)


def build_mnist_pkl(filename=None, idx_dir=None, download=True):
    """Build the book's ``mnist.pkl.gz`` at ``filename`` (default:
    ``data_dir()/mnist.pkl.gz``) from the MNIST IDX files in ``idx_dir``
    (default: $NETWORK3_MNIST_DIR, else ``data_dir()/mnist``, downloading
    them there when ``download`` is true and they are missing)."""
    filename = Path(filename) if filename else data_dir() / "mnist.pkl.gz"
    if idx_dir is None:
        idx_dir = os.environ.get("NETWORK3_MNIST_DIR") or data_dir() / "mnist"
        have = all(find_idx_file(n, idx_dir) for n in MNIST_FILES)
        if not have and download:
            download_mnist(idx_dir)
    save_data(mnist_arrays(idx_dir), filename)
    return filename


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m network3 data",
        description="Build the book's mnist.pkl.gz from the MNIST IDX files.")
    parser.add_argument("--idx-dir", help="folder holding the four MNIST "
                        "files (.gz or not); default: download them")
    parser.add_argument(
        "--out", help=f"output file (default {data_dir()}/mnist.pkl.gz)")
    args = parser.parse_args(argv)
    try:
        out = build_mnist_pkl(args.out, args.idx_dir)
    except (DataError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {out}")

