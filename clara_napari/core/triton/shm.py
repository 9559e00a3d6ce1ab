"""System shared memory for requests to a Triton server on this host.

A :class:`ShmSlot` is an input and an output region (owner-only, created by us, never adopted),
registered with the server. A :class:`SlotPool` lends slots to requests and takes them back; a
*generation* counter marks every slot registered before a server restart (:meth:`SlotPool.drop`):
those are closed when they come back instead of being lent again. Regions still alive at exit are
unlinked.

Clients are passed in rather than kept: an HTTP client belongs to the thread (gevent hub) that
made it, and using it from another thread can block for good.
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import queue
import threading
import weakref
from typing import Any

from .errors import client_errors

_REGIONS: weakref.WeakSet[ShmSlot] = weakref.WeakSet()
_COUNTER = itertools.count()


def region_errors() -> tuple[type[BaseException], ...]:
    from tritonclient.utils.shared_memory import SharedMemoryException

    return (SharedMemoryException, OSError)


class ShmSlot:
    """An input and an output system shared-memory region registered with the server."""

    def __init__(self, client: Any, in_bytes: int, out_bytes: int, headers: dict[str, str] | None = None) -> None:
        import tritonclient.utils.shared_memory as shm

        tag = f"clara_napari_{os.getpid()}_{next(_COUNTER)}"
        self.names = (f"{tag}_in", f"{tag}_out")
        self.sizes = (in_bytes, out_bytes)
        self.generation = 0
        self.handles: list[Any] = []
        try:
            for name, size in zip(self.names, self.sizes, strict=True):
                # create_only: never adopt a region someone else made under our name (0600, ours)
                self.handles.append(shm.create_shared_memory_region(name, f"/{name}", size, create_only=True))
            if client is not None:
                for name, size in zip(self.names, self.sizes, strict=True):
                    client.register_system_shared_memory(name, f"/{name}", size, headers=headers)
        except BaseException:
            self.close(client, headers)
            raise
        _REGIONS.add(self)

    def fits(self, in_bytes: int, out_bytes: int) -> bool:
        return self.sizes[0] >= in_bytes and self.sizes[1] >= out_bytes

    def close(self, client: Any = None, headers: dict[str, str] | None = None) -> None:
        """Unregister (with ``client``, best effort) and unlink the regions."""
        import tritonclient.utils.shared_memory as shm

        if client is not None:
            for name in self.names:
                with contextlib.suppress(*client_errors()):
                    client.unregister_system_shared_memory(name, headers=headers)
        for handle in self.handles:
            with contextlib.suppress(*region_errors()):
                shm.destroy_shared_memory_region(handle)
        self.handles = []
        _REGIONS.discard(self)

    def unlink(self) -> None:
        """Remove the regions' names only (a request may still be using the mappings)."""
        for name in self.names:
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{name}")
        _REGIONS.discard(self)


class SlotPool:
    """Slots lent to requests, most recently returned first; thread-safe."""

    def __init__(self) -> None:
        self._idle: queue.LifoQueue[ShmSlot] = queue.LifoQueue()
        self._all: list[ShmSlot] = []
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def generation(self) -> int:
        return self._generation

    def __len__(self) -> int:
        """Slots alive (lent or idle)."""
        with self._lock:
            return len(self._all)

    @property
    def idle(self) -> int:
        return self._idle.qsize()

    def acquire(self, client: Any, in_bytes: int, out_bytes: int, headers: dict[str, str] | None = None) -> ShmSlot:
        """An idle slot of this generation big enough, else a new one (idle slots too small or
        of an older generation are closed on the way)."""
        while True:
            try:
                slot = self._idle.get_nowait()
            except queue.Empty:
                slot = ShmSlot(client, in_bytes, out_bytes, headers)
                with self._lock:
                    slot.generation = self._generation
                    self._all.append(slot)
                return slot
            if slot.generation == self._generation and slot.fits(in_bytes, out_bytes):
                return slot
            self.forget(slot, client, headers)

    def release(self, slot: ShmSlot, client: Any, headers: dict[str, str] | None = None) -> None:
        """A slot back from its request: idle again, or closed if it is of an older generation."""
        if slot.generation == self._generation:
            self._idle.put(slot)
        else:
            self.forget(slot, client, headers)

    def forget(self, slot: ShmSlot, client: Any, headers: dict[str, str] | None = None) -> None:
        slot.close(client, headers)
        with self._lock:
            if slot in self._all:
                self._all.remove(slot)

    def drop(self, client: Any, headers: dict[str, str] | None = None) -> None:
        """Forget every slot (the server restarted): idle ones now, lent ones when they come back."""
        with self._lock:
            self._generation += 1
        while True:
            try:
                slot = self._idle.get_nowait()
            except queue.Empty:
                break
            self.forget(slot, client, headers)

    def take_all(self) -> list[ShmSlot]:
        """Every slot alive, which the pool forgets (for the model's close)."""
        with self._lock:
            slots, self._all = self._all, []
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                return slots


@atexit.register
def cleanup_all_regions() -> None:
    for slot in list(_REGIONS):
        slot.close()  # unlink only: the server drops its mapping when it sees the region gone or stops
