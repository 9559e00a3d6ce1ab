"""Where a run writes, checked before anything is read: folders apart from the input, one name per input.

* The output, publish and logs folders may not be the input, lie inside it or contain it
  (links resolved): a run never writes into what it reads.
* Every input gets its own output name. ``safe_stem`` maps unsafe characters to ``_``, so
  ``a b``, ``a*b`` and ``a_b`` would all become ``a_b``, and ``A.nii``/``a.nii`` are one file
  on a case-insensitive file system. A name that had to be cleaned always gets
  ``-<8 hex digits>`` (the start of the SHA-256 of the original file name) appended, and so do
  names that still collide (ignoring case) with another input's files or publish folder. If that
  cannot separate them the run is refused with the list; nothing is ever silently overwritten.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import OutputError
from .volume import safe_stem, volume_stem

HASH_DIGITS = 8


def name_hash(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:HASH_DIGITS]


def _resolved(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def check_folders(input_path: Path, folders: dict[str, Path | None]) -> None:
    """Refuse an output/publish/logs folder equal to, inside or containing the input (links resolved)."""
    source = _resolved(input_path)
    resolved = {}
    for role, folder in folders.items():
        if folder is None:
            continue
        target = _resolved(folder)
        if target == source:
            raise OutputError(f"{folder}: the {role} folder is the input {input_path}; refused.")
        if source in target.parents:
            raise OutputError(f"{folder}: the {role} folder is inside the input {input_path}; refused.")
        if target in source.parents:
            raise OutputError(f"{folder}: the {role} folder contains the input {input_path}; refused.")
        resolved[role] = target
    if "output" in resolved and resolved.get("publish") == resolved["output"]:
        raise OutputError(f"{folders['publish']}: the publish folder is the output folder; their files share "
                          "names (<name>.mhd), choose another.")


def companions(target: Path, compress: bool = False) -> list[Path]:
    """The files a target really is: a ``.mhd`` header comes with its ``.raw`` (or ``.zraw``)."""
    if target.suffix.lower() == ".mhd":
        return [target.with_suffix(".zraw" if compress else ".raw"), target]
    return [target]


def distinct_stems(inputs: Iterable[Path], files_for: Callable[[str], list[Path]]) -> dict[Path, str]:
    """One output stem per input such that no two inputs write the same file (ignoring case).

    ``files_for(stem)`` lists every path (files and per-volume folders) an input named ``stem``
    would write.
    """
    inputs = list(inputs)
    stems: dict[Path, str] = {}
    for source in inputs:
        original = volume_stem(source)
        stem = safe_stem(original)
        stems[source] = f"{stem}-{name_hash(source.name)}" if stem != original else stem
    for attempt in range(3):  # plain names first; then the colliding ones with their hash
        owners: dict[str, list[Path]] = {}
        for source, stem in stems.items():
            for key in [str(p).casefold() for p in files_for(stem)]:  # a name twice: it clashes with itself
                owners.setdefault(key, []).append(source)
        clashing = {s for group in owners.values() if len(group) > 1 for s in group}
        if not clashing:
            return stems
        if attempt == 2:
            break
        for source in clashing:
            suffix = f"-{name_hash(source.name)}"
            if not stems[source].endswith(suffix):
                stems[source] += suffix
    groups = sorted({tuple(sorted({p.name for p in g})) for g in owners.values() if len(g) > 1})
    listed = "; ".join(", ".join(g) for g in groups)
    raise OutputError(f"these inputs would write the same output files, rename them: {listed}.")
