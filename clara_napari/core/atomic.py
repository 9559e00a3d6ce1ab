"""Write files so that a reader never sees a partial one, and nothing is replaced by surprise.

Everything is written under a temporary name in the destination folder and renamed into
place at the end (rename is atomic within one file system). On any exception the temporary
files are removed and the destination is left as it was.

* Without ``overwrite`` the promise "an existing file is never replaced" holds at the moment of
  the rename: files are put in place with ``link`` (which refuses an existing name) and the
  temporary name removed, so of two runs racing for one name exactly one wins.
* A :class:`Transaction` commits the files of several folders together (one volume's outputs
  and its publish bundle): either all land, or none does and replaced files are restored.
* Files and folders get the modes the umask asks for (``0666 & ~umask``), as ``open`` would.
* Staging folders are named ``.clara-napari-<pid>-*.part``; those of processes that no longer
  exist (a kill while writing) are removed the next time something is written there.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import VolumeError

STAGING_PREFIX = ".clara-napari-"
STAGING_SUFFIX = ".part"
_STAGING_RE = re.compile(r"^\.clara-napari-(?:(\d+)-)?[A-Za-z0-9_]+\.part$")
#: a staging folder without a pid in its name (older versions) is stale after this many seconds
LEGACY_STALE_S = 3600.0
#: the list of moves of a commit under way, in its first staging folder (see ``_roll_forward``)
JOURNAL = ".commit.json"


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` is not thread-safe to probe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0666 & ~umask``."""
    return 0o666 & ~current_umask()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _stale_entries(folder: Path) -> list[Path]:
    """The staging folders (and ``.part`` files) in ``folder`` of processes that are gone."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    now = time.time()
    stale = []
    for entry in entries:
        match = _STAGING_RE.match(entry.name)
        if not match or entry.is_symlink():
            continue
        pid = match.group(1)
        try:
            if not _pid_alive(int(pid)) if pid else now - entry.lstat().st_mtime > LEGACY_STALE_S:
                stale.append(entry)
        except OSError:
            continue
    return stale


def _roll_forward(staging: Path) -> list[Path]:
    """Finish the commit a killed process had begun (its journal lists every move; all files were
    written before it started). Only moves of a staged file to the same name one folder up, from a
    staging folder of the same dead process, are done: a planted journal can move nothing else."""
    try:
        data = json.loads((staging / JOURNAL).read_text(encoding="utf-8"))
        moves, overwrite = data["moves"], data["overwrite"] is True
    except (OSError, ValueError, KeyError, TypeError):
        return []
    own = _STAGING_RE.match(staging.name)
    if own is None:  # not a staging folder (callers pass only _stale_entries' ones): nothing to finish
        return []
    pid = own.group(1)
    done = []
    for item in moves if isinstance(moves, list) else []:
        try:
            src, dst = Path(item[0]), Path(item[1])
        except (TypeError, IndexError):
            continue
        match = _STAGING_RE.match(src.parent.name)
        if not match or match.group(1) != pid or src.parent.parent != dst.parent or src.name != dst.name \
                or src.is_symlink() or not src.is_file():
            continue
        with contextlib.suppress(OSError, VolumeError):
            _place(src, dst, overwrite, None)
            done.append(dst)
    return done


def remove_stale_partials(*folders: Path) -> list[Path]:
    """Remove what dead processes left in ``folders`` while writing.

    A commit that was under way when its process died is finished first (all folders' journals
    before any staging folder is removed, so the files it still had to move are there).
    """
    stale = [entry for folder in folders for entry in _stale_entries(folder)]
    for entry in stale:
        if entry.is_dir() and (entry / JOURNAL).is_file():
            _roll_forward(entry)
    for entry in stale:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return stale


def _make_staging(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", suffix=STAGING_SUFFIX, dir=dest))


@contextlib.contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """Yield an empty hidden folder inside ``dest`` to write files into under their final names.

    ``commit(staging, dest, names)`` then moves them into ``dest``. The folder and whatever is
    left in it are removed on the way out, on success and on failure alike.
    """
    staging = _make_staging(Path(dest))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(src: Path, target: Path, overwrite: bool, backup: Path | None) -> bool:
    """Put ``src`` at ``target``; returns whether an old ``target`` was moved to ``backup``.

    Without ``overwrite``: ``link`` fails on an existing name, so the check is the rename itself.
    """
    os.chmod(src, file_mode())
    if not overwrite:
        try:
            os.link(src, target, follow_symlinks=False)
        except FileExistsError:
            raise VolumeError(f"{target}: exists already (use --overwrite to replace it).") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            # no hard links on this file system: claim the name first (O_EXCL), then replace our claim
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                raise VolumeError(f"{target}: exists already (use --overwrite to replace it).") from None
            os.replace(src, target)
            return False
        os.unlink(src)
        return False
    moved = False
    if backup is not None and (target.exists() or target.is_symlink()):
        if target.is_dir() and not target.is_symlink():
            raise VolumeError(f"{target}: is a folder; refusing to write over it.")
        # the old file is kept (a second name for it) until the whole commit succeeded; the
        # replace below stays atomic for readers
        try:
            os.link(target, backup, follow_symlinks=False)
        except OSError:
            shutil.copy2(target, backup, follow_symlinks=False)
        moved = True
    os.replace(src, target)
    return moved


def _order(name: str) -> tuple[int, str]:
    """Data files first, headers after them, ``config.meta`` (which names all of them) last."""
    if name == "config.meta":
        return 2, name
    return (0 if name.lower().endswith((".raw", ".zraw")) else 1), name


def commit(staging: Path, dest: Path, names: list[str], *, overwrite: bool = True) -> list[Path]:
    """Rename ``names`` from ``staging`` into ``dest`` in the given order (data before headers).

    All or nothing: if one cannot be placed, those placed before it are taken back (and what
    they replaced is restored).
    """
    txn = Transaction(overwrite=overwrite)
    txn._stagings[Path(dest)] = Path(staging)
    txn._names[Path(dest)] = list(names)
    return txn.commit()


class Transaction:
    """Files for several folders, staged beside their targets and committed together.

    ``path(target)`` gives where to write ``target`` now; ``commit()`` moves every staged file
    into place (folder by folder in the order first used, data before headers). If any step
    fails, the files already placed are removed again and the ones they replaced come back,
    and the error is raised as a :class:`VolumeError`. Use it as a context manager so that
    staging folders are always removed.
    """

    def __init__(self, *, overwrite: bool = False, forbid=()) -> None:
        self.overwrite = overwrite
        #: files never to be written over, whatever ``overwrite`` says (the inputs)
        self.forbid = {Path(p).resolve() for p in forbid if p}
        self._stagings: dict[Path, Path] = {}
        self._names: dict[Path, list[str]] = {}  # an explicit order (``commit``, ``atomic_paths``)
        self._claimed: set[str] = set()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def staging(self, folder: Path) -> Path:
        folder = Path(folder)
        if folder not in self._stagings:
            try:
                self._stagings[folder] = _make_staging(folder)
            except OSError as exc:
                raise VolumeError(f"{folder}: cannot write there ({exc.strerror or exc}).") from None
        return self._stagings[folder]

    def path(self, target: Path) -> Path:
        """Where to write ``target`` now. Two writes of one name (ignoring case; a ``.mhd`` also
        claims its ``.raw``/``.zraw``) are refused: the second would silently replace the first."""
        target = Path(target)
        names = [target.name]
        if target.suffix.lower() == ".mhd":
            names += [target.name[:-4] + ".raw", target.name[:-4] + ".zraw"]
        keys = [str(self.staging(target.parent) / name).casefold() for name in names]
        if any(key in self._claimed for key in keys):
            raise VolumeError(f"{target}: two outputs of this volume have this name; refused.")
        self._claimed.update(keys)
        return self.staging(target.parent) / target.name

    def commit(self) -> list[Path]:
        placed: list[tuple[Path, Path | None]] = []
        plan = [(folder, staging, self._names.get(folder) or sorted(
                    (p.name for p in staging.iterdir() if p.is_file() and p.name != JOURNAL), key=_order))
                for folder, staging in self._stagings.items()]
        try:
            for folder, _, names in plan:
                for name in names:
                    if (folder / name).resolve() in self.forbid:
                        raise VolumeError(f"{folder / name}: refusing to write over the input file.")
            if len(plan) > 1 or sum(len(names) for _, _, names in plan) > 1:
                # a kill from here on is finished by the next run (remove_stale_partials)
                first = plan[0][1]
                moves = [[str(staging / n), str(folder / n)] for folder, staging, names in plan for n in names]
                (first / (JOURNAL + ".tmp")).write_text(json.dumps({"overwrite": self.overwrite, "moves": moves}))
                os.replace(first / (JOURNAL + ".tmp"), first / JOURNAL)
            for folder, staging, names in plan:
                backups = staging / ".replaced"
                backups.mkdir(exist_ok=True)
                for name in names:
                    backup = backups / name
                    moved = _place(staging / name, folder / name, self.overwrite, backup)
                    placed.append((folder / name, backup if moved else None))
        except BaseException as exc:
            self._roll_back(placed)
            if isinstance(exc, OSError):
                raise VolumeError(f"{getattr(exc, 'filename', None) or exc}: cannot put the output in place "
                                  f"({exc.strerror or exc}); nothing of this volume was written.") from None
            raise
        return [target for target, _ in placed]

    @staticmethod
    def _roll_back(placed: list[tuple[Path, Path | None]]) -> None:
        for target, backup in reversed(placed):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink()

    def discard(self) -> None:
        for staging in self._stagings.values():
            shutil.rmtree(staging, ignore_errors=True)
        self._stagings.clear()


@contextlib.contextmanager
def atomic_paths(*targets: Path, overwrite: bool = True) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``targets``; rename them over the targets on success.

    Several targets (a ``.mhd`` and its ``.raw``) are committed together: data files first,
    the header last, so a header never names a data file that is not there yet.
    """
    targets = tuple(Path(t) for t in targets)
    with Transaction(overwrite=overwrite) as txn:
        temps = [txn.path(target) for target in targets]
        for folder in {t.parent for t in targets}:
            txn._names[folder] = [t.name for t in reversed(targets) if t.parent == folder]
        yield temps
        txn.commit()
