"""The Omniglot images as one uint8 array, decoded once and cached, plus the class splits.

Decoding 32,460 PNGs takes a while; the result goes to $XDG_CACHE_HOME/lamanas/ (default
~/.cache/lamanas/) under a name that holds a fingerprint of the data and the image size,
so every later load (tests, workers, the web app) is a file read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import decode_omniglot_png
from .root import resolve_data_root

log = logging.getLogger(__name__)

# Bump when the decoding changes, so old caches are not reused.
DECODE_VERSION = 1
SET_KEYS = ("background", "evaluation")  # the JSON keys; folders are images_<key>
SPLITS = ("vinyals", "lake")
PARTS = ("train", "val", "test")
SPLITS_DIR = Path(__file__).resolve().parent / "splits"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lamanas"


def scan(root: Path) -> tuple[list[tuple[str, str, str]], list[list[str]], str]:
    """Classes (set, alphabet, character) in sorted order, their PNGs (relative paths,
    sorted) and a fingerprint: sha1 over each relative path and its size in bytes.

    Only names and sizes are read, so this stays cheap enough to run on every load.
    """
    classes: list[tuple[str, str, str]] = []
    files: list[list[str]] = []
    sha = hashlib.sha1()
    base = root / "omniglot-py"
    for key in SET_KEYS:
        set_dir = base / f"images_{key}"
        for alphabet in sorted(e.name for e in os.scandir(set_dir) if e.is_dir()):
            alphabet_dir = set_dir / alphabet
            for character in sorted(e.name for e in os.scandir(alphabet_dir) if e.is_dir()):
                rel_dir = f"images_{key}/{alphabet}/{character}"
                entries = sorted(
                    (e for e in os.scandir(alphabet_dir / character) if e.is_file() and e.name.endswith(".png")),
                    key=lambda e: e.name,
                )
                if not entries:
                    continue
                rels = []
                for e in entries:
                    rel = f"{rel_dir}/{e.name}"
                    sha.update(f"{rel}\t{e.stat().st_size}\n".encode())
                    rels.append(rel)
                classes.append((key, alphabet, character))
                files.append(rels)
    if not classes:
        raise FileNotFoundError(f"no Omniglot PNGs under {base}")
    return classes, files, sha.hexdigest()


def _decode_all(base: Path, paths: list[str], size: int, workers: int) -> np.ndarray:
    full = [str(base / p) for p in paths]
    out = np.empty((len(full), size, size), dtype=np.uint8)
    if workers <= 1 or len(full) < 2000:  # a pool costs more than it saves on few files
        for i, p in enumerate(full):
            out[i] = decode_omniglot_png(p, size)
        return out
    # fork: workers need only PIL and numpy, and fork avoids re-importing torch per worker.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(workers) as pool:
        for i, img in enumerate(pool.imap(_decode_one, [(p, size) for p in full], chunksize=256)):
            out[i] = img
    return out


def _decode_one(args: tuple[str, int]) -> np.ndarray:
    return decode_omniglot_png(*args)


def _write_atomic(path: Path, **arrays) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loads in a fraction of a second
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class _CacheLock:
    """Serialise the first decode between processes (tests, workers) on one machine,
    so only one of them pays for it. A no-op where fcntl does not exist."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock


def _read_cache(path: Path, fingerprint: str, image_class: np.ndarray, size: int) -> np.ndarray | None:
    """The cached images, or None when the file is missing, damaged or for other data."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint or not np.array_equal(z["image_class"], image_class):
                return None
            images = z["images"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return images if images.shape == (len(image_class), size, size) else None


@dataclass
class Omniglot:
    """All 1,623 characters: `images[i]` (uint8, strokes high) belongs to class
    `image_class[i]`, an index into `classes`."""

    root: Path
    images: np.ndarray
    image_class: np.ndarray
    classes: list[tuple[str, str, str]]
    fingerprint: str
    size: int
    cache_path: Path | None = None
    class_images: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self):
        # Image indices of each class, for the sampler.
        order = np.argsort(self.image_class, kind="stable")
        counts = np.bincount(self.image_class, minlength=len(self.classes))
        self.class_images = np.split(order, np.cumsum(counts)[:-1])

    def __len__(self) -> int:
        return len(self.images)

    def class_ids(self, split: str, part: str) -> list[int]:
        """Base class ids of one part of a split.

        vinyals: 1028/172/423 classes (train/val/test) from the torchmeta JSONs.
        lake: train = images_background (964), test = images_evaluation (659); no val.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if part not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}; got {part!r}")
        if split == "lake":
            if part == "val":
                raise ValueError("the lake split has no val part (background = train, evaluation = test)")
            key = "background" if part == "train" else "evaluation"
            return [i for i, c in enumerate(self.classes) if c[0] == key]
        index = {c: i for i, c in enumerate(self.classes)}
        with open(SPLITS_DIR / f"{part}.json") as f:
            listed = json.load(f)
        ids, missing = [], []
        for key, alphabets in listed.items():
            for alphabet, characters in alphabets.items():
                for character in characters:
                    i = index.get((key, alphabet, character))
                    if i is None:
                        missing.append(f"images_{key}/{alphabet}/{character}")
                    else:
                        ids.append(i)
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} classes of the vinyals {part} split are not in {self.root} "
                f"(first: {missing[0]}); the data copy is incomplete"
            )
        return sorted(ids)


def load_omniglot(
    root: str | os.PathLike | None = None,
    size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Omniglot:
    """Load all Omniglot images at `size` x `size`, from the cache when it is there.

    `root` goes through resolve_data_root (so None means LAMANAS_DATA or the defaults).
    The first call decodes every PNG (`workers` processes, default min(2, CPUs)).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    root = resolve_data_root(root)
    classes, files, fingerprint = scan(root)
    image_class = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in files])
    paths = [p for f in files for p in f]

    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_path = cache_dir / f"omniglot-{fingerprint[:16]}-{size}px-v{DECODE_VERSION}.npz"
    images = _read_cache(cache_path, fingerprint, image_class, size)
    if images is None:
        with _CacheLock(cache_dir / f"{cache_path.name}.lock"):
            images = _read_cache(cache_path, fingerprint, image_class, size)  # another process may have built it
            if images is None:
                n_workers = workers if workers is not None else min(2, os.cpu_count() or 1)
                start = time.perf_counter()
                images = _decode_all(root / "omniglot-py", paths, size, n_workers)
                log.info("decoded %d Omniglot PNGs in %.1f s -> %s", len(paths), time.perf_counter() - start, cache_path)
                _write_atomic(cache_path, images=images, image_class=image_class, fingerprint=np.array(fingerprint))
    return Omniglot(root, images, image_class, classes, fingerprint, size, cache_path)
