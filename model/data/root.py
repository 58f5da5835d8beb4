"""Where the Omniglot images live, found the same way by tests, workers and the web app.

A data root is the folder that contains `omniglot-py/` (torchvision's layout). Users may
also point at the `omniglot-py/` folder itself; both resolve to the parent.
"""
from __future__ import annotations

import os
from pathlib import Path

SETS = ("images_background", "images_evaluation")
ENV_VAR = "LAMANAS_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]  # model/data/root.py -> repo


class DataNotFoundError(FileNotFoundError):
    """No usable Omniglot folder; the message says where we looked and how to get it."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "lamanas" / "omniglot"


def _as_root(path: Path) -> Path | None:
    """The folder holding `omniglot-py/` with both image sets, or None."""
    for root in (path, path.parent) if path.name == "omniglot-py" else (path,):
        if all((root / "omniglot-py" / s).is_dir() for s in SETS):
            return root.resolve()
    return None


def how_to_get_data() -> str:
    return (
        "To get the data, either set LAMANAS_DATA (or pass --data-root) to a folder holding an "
        "extracted omniglot-py/ (with images_background/ and images_evaluation/), or download it "
        "(needs internet) with: python -m model download-data --data-root DIR"
    )


def _not_found(looked: list[str]) -> DataNotFoundError:
    places = "\n".join(f"  - {p}" for p in looked)
    return DataNotFoundError(f"Omniglot data not found. Looked in:\n{places}\n{how_to_get_data()}")


def default_candidates() -> list[Path]:
    """Places searched when neither an argument nor LAMANAS_DATA names one, in order."""
    out: list[Path] = []
    for p in (
        REPO_ROOT.parent / "shared" / "data" / "omniglot",
        Path.cwd().parent / "shared" / "data" / "omniglot",
        Path.cwd() / "shared" / "data" / "omniglot",
        default_data_dir(),
    ):
        if p not in out:
            out.append(p)
    return out


def find_root(candidates: list[Path]) -> Path:
    """The first candidate that holds the data; DataNotFoundError listing all of them."""
    for p in candidates:
        root = _as_root(p)
        if root is not None:
            return root
    raise _not_found([str(p) for p in candidates])


def resolve_data_root(cli_value: str | os.PathLike | None = None) -> Path:
    """The Omniglot data root: `cli_value`, else $LAMANAS_DATA, else the default places.

    An explicit value (argument or env) that holds no data is an error rather than a
    reason to fall back: silently training on another copy would be worse.
    """
    if cli_value:
        path = Path(cli_value).expanduser()
        root = _as_root(path)
        if root is None:
            raise _not_found([f"{path} (from --data-root / data_root argument)"])
        return root
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        root = _as_root(path)
        if root is None:
            raise _not_found([f"{path} (from ${ENV_VAR})"])
        return root
    return find_root(default_candidates())


class DownloadError(RuntimeError):
    """Downloading Omniglot failed (usually: no internet access)."""


def download_omniglot(root: str | os.PathLike | None = None) -> Path:
    """Download both image sets into `root` (default: the XDG data folder) via torchvision.

    Returns the data root. Only works with internet access; failures raise DownloadError.
    """
    from torchvision.datasets import Omniglot as TVOmniglot  # heavy import, only here

    target = Path(root).expanduser() if root else default_data_dir()
    if target.name == "omniglot-py":
        target = target.parent
    target.mkdir(parents=True, exist_ok=True)
    for background in (True, False):
        try:
            TVOmniglot(str(target), background=background, download=True)
        except Exception as e:  # URLError, HTTPError, OSError, RuntimeError from torchvision
            raise DownloadError(
                f"could not download Omniglot into {target} ({type(e).__name__}: {e}). "
                "This needs internet access to github.com. Alternatively copy an extracted "
                f"omniglot-py/ folder into {target} or set {ENV_VAR} to one."
            ) from e
    found = _as_root(target)
    if found is None:
        raise DownloadError(f"download finished but {target}/omniglot-py has not both of {SETS}")
    return found
