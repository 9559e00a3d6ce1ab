"""The panel's logic without Qt: which server a run goes to, how results are named and re-run, and the
measurements table (volumes per label, Dice against a reference). The Qt widget only shows these.
"""
from __future__ import annotations

import csv
import io
import math
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import ClaraNapariError, ServerError
from ..core.session import AUTO, EMBEDDED, LOCAL

if TYPE_CHECKING:
    from ..core.triton.address import Address

__all__ = ["AUTO", "EMBEDDED", "LOCAL"]   # the server field's special values (core's)

#: the server field: ``auto`` chooses as the CLI does ($NVIDIA_CLARA_TRTISURI, else the app's ip/port,
#: else an embedded server: :func:`clara_napari.core.session.choose_server` decides for every entry
#: point); ``embedded`` always starts one here; ``local`` runs the model in process
SERVER_HELP = ("'auto' ($NVIDIA_CLARA_TRTISURI, else the app's ip/port, else an embedded server, as the CLI), "
               "'embedded' (a Triton server started here), 'local' (onnxruntime in this process), "
               "or host:port, http://host:port, grpc://host:port; several, comma-separated, spread the windows "
               "over them (docs/scale.md)")

#: what a re-run on an image that already has a result does (remembered in the settings)
NEW_LAYER, REPLACE = "new layer", "replace (undoable)"
RERUN_CHOICES = (NEW_LAYER, REPLACE)

#: seconds a TCP connection to a named server may take before it counts as unreachable
CONNECT_TIMEOUT_S = 3.0


def check_reachable(address: Address | str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail at once when nothing listens at ``address`` (a refused connection needs no readiness wait)."""
    from ..core.triton.address import parse_address

    parsed = parse_address(address) if isinstance(address, str) else address
    try:
        socket.create_connection((parsed.host, parsed.port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        raise ServerError(f"Triton at {parsed}: connection refused, no server listens on {parsed.url}; start the "
                          "server or check the address and port.") from None
    except TimeoutError:
        raise ServerError(f"Triton at {parsed}: no answer within {timeout_s:g} s; check the address and the "
                          "network.") from None
    except OSError as exc:
        raise ServerError(f"Triton at {parsed}: cannot connect ({exc.strerror or exc}).") from None


def result_name(source: str, app: str, when: float | None = None) -> str:
    """A new result layer's name: the image, the app and the time of the run."""
    stamp = time.strftime("%H:%M:%S", time.localtime(time.time() if when is None else when))
    return f"{source} {app} {stamp}"


def replacement(old: np.ndarray, new: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The voxels a replacement changes: (indices, new values), for an undoable ``Labels.data_setitem``."""
    if old.shape != new.shape:
        raise ClaraNapariError(f"the new result has shape {list(new.shape)}, the layer {list(old.shape)}; "
                               "it cannot replace the layer's data.")
    indices = np.nonzero(old != new)
    return indices, np.asarray(new[indices])


@dataclass(frozen=True)
class Measurement:
    value: int
    name: str
    voxels: int
    ml: float
    dice: float | None = None


COLUMNS = ("label", "name", "voxels", "ml", "dice")


def measure(labels: np.ndarray, spacing: Sequence[float], names: dict[int, str] | None = None,
            reference: np.ndarray | None = None, reference_name: str = "the reference") -> list[Measurement]:
    """Per non-zero label value (those present and those the app names): voxels, millilitres
    (voxels × voxel volume, spacing in mm), and Dice against ``reference`` (same grid) when given."""
    names = dict(names or {})
    labels = np.asarray(labels)
    if reference is not None and np.shape(reference) != labels.shape:
        raise ClaraNapariError(f"{reference_name} has shape {list(np.shape(reference))}, the result "
                               f"{list(labels.shape)}; choose a reference labels layer on the image's grid.")
    voxel_ml = math.prod(float(s) for s in spacing) / 1000.0
    values, counts = np.unique(labels, return_counts=True)
    found = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}
    rows = []
    for value in sorted(set(found) | {int(v) for v in names if int(v) != 0}):
        voxels = found.get(value, 0)
        dice = None
        if reference is not None:
            mine, theirs = labels == value, np.asarray(reference) == value
            total = voxels + int(np.count_nonzero(theirs))
            dice = 2.0 * int(np.count_nonzero(mine & theirs)) / total if total else 1.0
        rows.append(Measurement(value, names.get(value, f"label {value}"), voxels, voxels * voxel_ml, dice))
    return rows


def table_rows(rows: Iterable[Measurement]) -> list[list[str]]:
    """The table as text cells (header first): ml with 3 decimals, Dice with 4, empty without a reference."""
    out = [list(COLUMNS)]
    for row in rows:
        out.append([str(row.value), row.name, str(row.voxels), f"{row.ml:.3f}",
                    "" if row.dice is None else f"{row.dice:.4f}"])
    return out


def to_csv(rows: Iterable[Measurement], delimiter: str = ",") -> str:
    """The table as CSV (or tab-separated text for the clipboard, with ``delimiter='\\t'``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerows(table_rows(rows))
    return buffer.getvalue()


def table_columns(rows: Iterable[Measurement]) -> dict[str, Any]:
    """The table as columns (a magicgui Table's value)."""
    cells = table_rows(rows)
    return {name: [row[i] for row in cells[1:]] for i, name in enumerate(cells[0])}
