"""Write files so that a reader never sees a partial one.

Everything is written under a temporary name in the destination folder and renamed into
place at the end (rename is atomic within one file system). On any exception the temporary
files are removed and the destination is left as it was.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty hidden folder inside ``dest`` to write files into under their final names.

    ``commit(staging, dest, names)`` then moves them into ``dest``. The folder and whatever is
    left in it are removed on the way out, on success and on failure alike.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".clara-napari-", suffix=".part", dir=dest))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit(staging: Path, dest: Path, names: list[str]) -> list[Path]:
    """Rename ``names`` from ``staging`` into ``dest`` in the given order (data before headers)."""
    done = []
    for name in names:
        src = staging / name
        os.chmod(src, 0o644)
        target = Path(dest) / name
        os.replace(src, target)
        done.append(target)
    return done


@contextlib.contextmanager
def atomic_paths(*targets: Path) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``targets``; rename them over the targets on success.

    Several targets (a ``.mhd`` and its ``.raw``) are committed together: data files first,
    the header last, so a header never names a data file that is not there yet.
    """
    targets = tuple(Path(t) for t in targets)
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for temp, target in reversed(list(zip(temps, targets))):
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        temps = []
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
