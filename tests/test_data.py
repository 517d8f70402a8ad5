"""network3.data: the book's mnist.pkl.gz (CONTRACT.md section 3), the
safe unpickler, IDX reading, SHA-256 verification, building and
downloading.

Real-data tests (marked ``mnist``) read data/mnist.pkl.gz and the original
IDX files, which they parse independently with gzip + numpy.  Downloads go
to a local HTTP server in a thread: nothing leaves the machine.
"""

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import pickletools
import shutil
import struct
import threading

import numpy as np
import pytensor
import pytest

import network3
from network3 import data as n3data
from network3.data import DataError


#### Independent readers and writers
def read_idx_gz(path):
    """An IDX file of unsigned bytes, parsed from its header by hand."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def book_layout(rng, sizes=(5, 3, 2)):
    """A small data set in the book's layout: x float32 (N, 784) of k/256,
    y int64."""
    return tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / np.float32(256),
                  rng.integers(0, 10, n).astype(np.int64)) for n in sizes)


def write_gz_pickle(path, obj, protocol=4):
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=protocol)))
    return path


class Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote at protocol 2: byte strings (and
    ASCII text) as ``str`` opcodes, SHORT_BINSTRING / BINSTRING, where Python
    3 writes a ``_codecs.encode`` reduce."""

    def _binstring(self, raw):
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    def save_bytes(self, obj):
        self._binstring(obj)
        self.memoize(obj)

    def save_str(self, obj):
        if not obj.isascii():
            return pickle._Pickler.save_str(self, obj)
        self._binstring(obj.encode("ascii"))
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def python2_pickle(obj):
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    # numpy < 2 (and Python 2's numpy) lived in numpy.core; protocol 2
    # GLOBAL opcodes are text, so the module name can be edited in place
    return buffer.getvalue().replace(b"numpy._core", b"numpy.core")


def assert_same_data(got, want):
    assert len(got) == 3
    for (gx, gy), (wx, wy) in zip(got, want):
        assert gx.dtype == wx.dtype and gy.dtype == wy.dtype
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)


#### The book's file (real data)
@pytest.mark.mnist
def test_load_data_shared_returns_three_shared_pairs(mnist_shared):
    assert isinstance(mnist_shared, list) and len(mnist_shared) == 3
    for (x, y), n in zip(mnist_shared, (50000, 10000, 10000)):
        assert isinstance(x, pytensor.compile.SharedVariable)
        assert x.dtype == "float32"
        assert x.get_value().shape == (n, 784)
        assert x.eval().shape == (n, 784)
        assert isinstance(y, pytensor.graph.basic.Variable)
        assert y.dtype == "int32"
        labels = y.eval()
        assert labels.shape == (n,) and labels.dtype == np.int32
        assert labels.min() == 0 and labels.max() == 9


@pytest.mark.mnist
def test_sizes_are_50000_10000_10000(mnist_shared, mnist):
    assert [network3.size(pair) for pair in mnist_shared] == [50000, 10000, 10000]
    assert [network3.size(pair) for pair in mnist] == [50000, 10000, 10000]


@pytest.mark.mnist
def test_numpy_loader_dtypes_float32_pixels_int64_labels(mnist):
    for x, y in mnist:
        assert x.dtype == np.float32 and x.shape[1] == 784
        assert y.dtype == np.int64


@pytest.mark.mnist
def test_pixel_values_are_k_over_256(mnist):
    for x, _ in mnist:
        assert x.min() == 0.0
        assert x.max() == np.float32(0.99609375)  # 255/256
        k = x * 256
        np.testing.assert_array_equal(k, np.round(k))


@pytest.mark.mnist
def test_splits_are_mnist_train_first_50000_last_10000_and_test(mnist, mnist_idx_dir):
    train_images = read_idx_gz(mnist_idx_dir / "train-images-idx3-ubyte.gz")
    train_labels = read_idx_gz(mnist_idx_dir / "train-labels-idx1-ubyte.gz")
    test_images = read_idx_gz(mnist_idx_dir / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx_gz(mnist_idx_dir / "t10k-labels-idx1-ubyte.gz")
    (tx, ty), (vx, vy), (sx, sy) = mnist
    # the first validation image is MNIST training image 50000
    np.testing.assert_array_equal(vx[0] * 256, train_images[50000].ravel())
    assert vy[0] == train_labels[50000]
    for ours, theirs in ((tx, train_images[:50000]), (vx, train_images[50000:]),
                         (sx, test_images)):
        np.testing.assert_array_equal(ours * 256, theirs.reshape(len(theirs), 784))
    np.testing.assert_array_equal(ty, train_labels[:50000])
    np.testing.assert_array_equal(vy, train_labels[50000:])
    np.testing.assert_array_equal(sy, test_labels)


def test_size_of_numpy_and_shared_pairs(rng):
    x, y = book_layout(rng)[0]
    assert network3.size((x, y)) == 5
    assert network3.size((pytensor.shared(x), pytensor.shared(y))) == 5


#### Pickles: the book's Python 2 file, Python 3 files, malicious files
def test_loads_python2_pickle(tmp_path, rng):
    """The book's mnist.pkl.gz is a Python 2 pickle: numpy.core globals and
    the array bytes as Python 2 str opcodes."""
    data = book_layout(rng, sizes=(5, 3, 1))
    raw = python2_pickle(data)
    opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
    assert {"SHORT_BINSTRING", "BINSTRING"} <= opcodes      # it is Python 2 style
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    assert b"_codecs" not in raw and "BINUNICODE" not in opcodes
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(raw))
    assert_same_data(n3data.load_data(path), data)
    shared = network3.load_data_shared(str(path))
    np.testing.assert_array_equal(shared[0][0].get_value(), data[0][0])
    np.testing.assert_array_equal(shared[2][1].eval(), data[2][1])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_loads_python3_pickles(tmp_path, rng, protocol):
    data = book_layout(rng)
    path = write_gz_pickle(tmp_path / "data.pkl.gz", data, protocol)
    assert_same_data(n3data.load_data(path), data)


def test_save_data_round_trip(tmp_path, rng):
    data = book_layout(rng)
    path = tmp_path / "sub" / "data.pkl.gz"
    n3data.save_data(data, path)
    assert_same_data(n3data.load_data(path), data)
    assert not list(path.parent.glob("*.part"))


# One writer of test_two_processes_build_the_same_file_at_once: it saves the
# data set of seed 0 to argv[1], its training images pickled only once the
# other writer is pickling too (each touches ready-<its name> and waits for
# two), so that the two writes overlap; then it loads the file back.
_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from network3 import data

path, me = Path(sys.argv[1]), sys.argv[2]

class Meeting:
    def __init__(self, array):
        self.array = array

    def __reduce_ex__(self, protocol):  # pickled as the array, after the meeting
        (path.parent / f"ready-{me}").touch()
        deadline = time.monotonic() + 60
        while len(list(path.parent.glob("ready-*"))) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the other writer never started")
            time.sleep(0.01)
        return self.array.__reduce_ex__(protocol)

rng = np.random.default_rng(0)
sets = [(rng.integers(0, 256, (n, 784)).astype(np.float32) / np.float32(256),
         rng.integers(0, 10, n).astype(np.int64)) for n in (2000, 30, 20)]
data.save_data([(Meeting(sets[0][0]), sets[0][1]), *sets[1:]], path)
got = data.load_data(path)
assert all((g[0] == w[0]).all() and (g[1] == w[1]).all() for g, w in zip(got, sets))
print("whole")
"""


def test_two_processes_build_the_same_file_at_once(tmp_path):
    """Two processes save the same data file at the same moment (Dask
    workers of one machine that both lack mnist.pkl.gz): each writes a
    temporary file of its own, and both end with a whole, valid file."""
    import subprocess
    import sys
    path = tmp_path / "mnist.pkl.gz"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name in ("a", "b")]
    results = [writer.communicate(timeout=120) for writer in writers]
    assert [w.returncode for w in writers] == [0, 0], results
    assert [out for out, _ in results] == ["whole\n", "whole\n"]
    assert sorted(p.name for p in tmp_path.glob("ready-*")) == ["ready-a", "ready-b"]
    rng = np.random.default_rng(0)
    want = tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / np.float32(256),
                  rng.integers(0, 10, n).astype(np.int64)) for n in (2000, 30, 20))
    assert_same_data(n3data.load_data(path), want)
    assert not list(tmp_path.glob("*.part"))


def test_atomic_file_leaves_nothing_when_the_write_fails(tmp_path):
    path = tmp_path / "net.npz"
    path.write_bytes(b"the earlier file")
    with pytest.raises(RuntimeError, match="half way"):
        with n3data.atomic_file(path) as tmp:
            tmp.write_bytes(b"half a ")
            raise RuntimeError("half way")
    assert path.read_bytes() == b"the earlier file"
    assert [p.name for p in tmp_path.iterdir()] == ["net.npz"]


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (eval, (self.command,))


@pytest.mark.parametrize("payload", [_System, _Eval])
def test_safe_unpickler_refuses_malicious_pickle(tmp_path, payload):
    marker = tmp_path / "pwned"
    command = (f"touch {marker}" if payload is _System
               else f"open({str(marker)!r}, 'w').close()")
    pickle.loads(pickle.dumps(payload(command)))   # the payload does work...
    assert marker.exists()
    marker.unlink()
    path = write_gz_pickle(tmp_path / "evil.pkl.gz", payload(command), protocol=2)
    with pytest.raises(DataError, match="refusing to load") as info:
        n3data.load_data(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # hidden inside the book's layout, too
    nested = ((np.zeros((1, 784), np.float32), payload(command)), (), ())
    path = write_gz_pickle(tmp_path / "evil2.pkl.gz", nested)
    with pytest.raises(DataError, match="refusing to load"):
        n3data.load_data(path)
    assert not marker.exists()


def test_truncated_gzip_raises_data_error_naming_file(tmp_path, rng):
    path = write_gz_pickle(tmp_path / "mnist.pkl.gz", book_layout(rng))
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(DataError, match="truncated") as info:
        n3data.load_data(path)
    assert str(path) in str(info.value)


def test_not_a_gzip_file_raises_data_error(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError) as info:
        n3data.load_data(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("obj", [
    (1, 2, 3),
    [np.zeros((2, 784), np.float32), np.zeros(2)],
    ((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)),) * 2,
    ((np.zeros(784, np.float32), np.zeros(2, np.int64)),) * 3,
    ((np.zeros((2, 784), np.float32), np.zeros(3, np.int64)),) * 3,
    ((np.zeros((2, 784), np.float32), np.zeros(2, np.float32)),) * 3,
], ids=["ints", "pair", "two-splits", "x-1d", "length-mismatch", "float-labels"])
def test_wrong_layout_raises_data_error(tmp_path, obj):
    path = write_gz_pickle(tmp_path / "mnist.pkl.gz", obj)
    with pytest.raises(DataError) as info:
        n3data.load_data(path)
    assert str(path) in str(info.value)


def test_missing_file_says_what_to_run(tmp_path):
    path = tmp_path / "nowhere" / "mnist.pkl.gz"
    with pytest.raises(FileNotFoundError, match="python -m network3 data") as info:
        network3.load_data_shared(str(path))
    assert str(path) in str(info.value)


def test_default_path_from_scripts_folder_is_book_relative(tmp_path, monkeypatch, rng):
    """Run from scripts/, as the book was, load_data_shared() finds
    ../data/mnist.pkl.gz."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "data").mkdir()
    data = book_layout(rng, sizes=(4, 3, 2))
    n3data.save_data(data, tmp_path / "data" / "mnist.pkl.gz")
    monkeypatch.setenv("NETWORK3_DATA", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path / "scripts")
    shared = network3.load_data_shared()
    assert [network3.size(pair) for pair in shared] == [4, 3, 2]
    np.testing.assert_array_equal(shared[1][0].get_value(), data[1][0])


def test_default_path_falls_back_to_data_dir(tmp_path, monkeypatch, rng):
    monkeypatch.setenv("NETWORK3_DATA", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    assert n3data.data_dir() == tmp_path / "store"
    data = book_layout(rng)
    n3data.save_data(data, tmp_path / "store" / "mnist.pkl.gz")
    assert_same_data(n3data.load_data(), data)


@pytest.mark.mnist
def test_load_data_builds_the_file_on_first_use(tmp_path, monkeypatch, mnist_idx_dir,
                                                mnist):
    monkeypatch.setenv("NETWORK3_DATA", str(tmp_path / "store"))
    monkeypatch.setenv("NETWORK3_MNIST_DIR", str(mnist_idx_dir))
    monkeypatch.chdir(tmp_path)
    assert_same_data(n3data.load_data(), mnist)
    assert (tmp_path / "store" / "mnist.pkl.gz").exists()


#### IDX files and their SHA-256 sums
@pytest.mark.mnist
def test_read_idx_matches_independent_parse(mnist_idx_dir, tmp_path):
    for name in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        ours = n3data.read_idx(mnist_idx_dir / (name + ".gz"))
        theirs = read_idx_gz(mnist_idx_dir / (name + ".gz"))
        assert ours.dtype == np.uint8 and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
    # uncompressed IDX files are read as well
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress(
        (mnist_idx_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(
        n3data.read_idx(plain), read_idx_gz(mnist_idx_dir / "t10k-labels-idx1-ubyte.gz"))


def test_read_idx_rejects_damaged_files(tmp_path):
    not_idx = tmp_path / "not-idx"
    not_idx.write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        n3data.read_idx(not_idx)
    short = tmp_path / "short-idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(7))
    with pytest.raises(DataError, match=r"\(10,\)"):
        n3data.read_idx(short)
    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(100))[:30])
    with pytest.raises(DataError, match="bad.gz"):
        n3data.read_idx(bad_gzip)


@pytest.mark.mnist
def test_sha256_sums_match_the_shared_sums_file(mnist_idx_dir):
    sums_file = mnist_idx_dir / "SHA256SUMS"
    if sums_file.exists():
        listed = dict(reversed(line.split()) for line in
                      sums_file.read_text().splitlines() if line.strip())
        assert listed == n3data.MNIST_FILES
    for name, digest in n3data.MNIST_FILES.items():
        content = gzip.decompress((mnist_idx_dir / (name + ".gz")).read_bytes())
        assert hashlib.sha256(content).hexdigest() == digest
        n3data.verify_idx(mnist_idx_dir / (name + ".gz"), name)


def corrupted_copy(src, dest):
    """``dest``: the gzip file ``src`` with one byte of its content changed."""
    content = bytearray(gzip.decompress(src.read_bytes()))
    content[len(content) // 2] ^= 0xFF
    dest.write_bytes(gzip.compress(bytes(content)))
    return dest


@pytest.mark.mnist
def test_corrupted_label_file_raises_data_error_naming_the_file(mnist_idx_dir, tmp_path):
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    for name in n3data.MNIST_FILES:
        if name != "t10k-labels-idx1-ubyte":
            (idx_dir / (name + ".gz")).symlink_to(mnist_idx_dir / (name + ".gz"))
    bad = corrupted_copy(mnist_idx_dir / "t10k-labels-idx1-ubyte.gz",
                         idx_dir / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="SHA-256") as info:
        n3data.verify_idx(bad, "t10k-labels-idx1-ubyte")
    assert str(bad) in str(info.value)
    out = tmp_path / "mnist.pkl.gz"
    with pytest.raises(DataError) as info:
        n3data.build_mnist_pkl(out, idx_dir=idx_dir, download=False)
    assert str(bad) in str(info.value)
    assert not out.exists()


def test_missing_idx_files_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m network3 data"):
        n3data.build_mnist_pkl(tmp_path / "out.pkl.gz", idx_dir=tmp_path,
                               download=False)


@pytest.mark.mnist
def test_build_mnist_pkl_produces_the_book_layout(mnist_idx_dir, tmp_path, mnist):
    out = n3data.build_mnist_pkl(tmp_path / "mnist.pkl.gz", idx_dir=mnist_idx_dir,
                                 download=False)
    built = n3data.load_data(out)
    assert [(x.shape, x.dtype, y.shape, y.dtype) for x, y in built] == [
        ((n, 784), np.float32, (n,), np.int64) for n in (50000, 10000, 10000)]
    train_images = read_idx_gz(mnist_idx_dir / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(built[1][0][0] * 256, train_images[50000].ravel())
    assert_same_data(built, mnist)
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.mnist
def test_command_line_builds_the_file(mnist_idx_dir, tmp_path, capsys):
    out = tmp_path / "mnist.pkl.gz"
    n3data.main(["--idx-dir", str(mnist_idx_dir), "--out", str(out)])
    assert str(out) in capsys.readouterr().out
    assert [network3.size(p) for p in n3data.load_data(out)] == [50000, 10000, 10000]


#### Downloading, from a local mirror
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_mirror(folder):
    """Serve ``folder`` at http://127.0.0.1:<ephemeral port>/ in a thread."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                 "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


UNREACHABLE = "http://127.0.0.1:1/"


@pytest.mark.mnist
def test_download_mnist_from_a_mirror_and_verify(mnist_idx_dir, tmp_path, no_proxy,
                                                 capsys):
    served = tmp_path / "mirror"
    served.mkdir()
    for name in n3data.MNIST_FILES:
        shutil.copy(mnist_idx_dir / (name + ".gz"), served)
    dest = tmp_path / "downloaded"
    with http_mirror(served) as url:
        # the first mirror is down: the next one is used
        n3data.download_mnist(dest, mirrors=(UNREACHABLE, url), timeout=10)
    for name in n3data.MNIST_FILES:
        assert (dest / (name + ".gz")).read_bytes() == \
            (mnist_idx_dir / (name + ".gz")).read_bytes()
        n3data.verify_idx(dest / (name + ".gz"), name)
    assert f"downloaded {url}train-images-idx3-ubyte.gz" in capsys.readouterr().err
    assert not list(dest.glob("*.part"))
    # files already there (and genuine) are not fetched again
    n3data.download_mnist(dest, mirrors=(UNREACHABLE,), timeout=10)


def test_download_rejects_a_corrupted_file(tmp_path, no_proxy):
    served = tmp_path / "mirror"
    served.mkdir()
    (served / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x03" + bytes(100)))
    dest = tmp_path / "downloaded"
    with http_mirror(served) as url:
        with pytest.raises(DataError, match="train-images-idx3-ubyte") as info:
            n3data.download_mnist(dest, mirrors=(url,), timeout=10)
    assert "SHA-256" in str(info.value)
    assert list(dest.iterdir()) == []  # neither the file nor a partial one


def test_download_from_unreachable_mirror_says_offline(tmp_path, no_proxy):
    with pytest.raises(DataError, match=r"could not download .*offline\?") as info:
        n3data.download_mnist(tmp_path, mirrors=(UNREACHABLE,), timeout=5)
    assert UNREACHABLE in str(info.value)
