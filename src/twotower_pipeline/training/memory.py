"""Memory for large tables: 2 MiB pages for rows read at random; freed blocks kept by malloc."""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch

# Tables of at least this many bytes live on 2 MiB pages (when the kernel offers them).
HUGE_PAGE_MIN_BYTES = 8 << 20
_HUGE_PAGE = 2 << 20


def on_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """Return a copy of a large CPU tensor in memory the kernel may back with 2 MiB pages.

    A step reads and updates ~10^4 rows scattered over tables of hundreds of MB; with
    4 KiB pages nearly every row costs a TLB miss and a page walk. The copy starts on a
    2 MiB boundary of an anonymous mapping advised MADV_HUGEPAGE (Linux transparent
    huge pages in `always` or `madvise` mode). Small tensors, other devices and systems
    without madvise get the tensor back unchanged; the values are the same either way.
    """
    region = _huge_page_region(tensor.shape, tensor.dtype, tensor.device)
    return tensor if region is None else region.copy_(tensor)


def huge_page_zeros(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Return zeros of like's dtype and device, on 2 MiB pages where on_huge_pages would be.

    Written once here (not copied from a table of zeros, which would hold both at
    once), so training's first steps do not pay a page fault per row they touch.
    """
    region = _huge_page_region(torch.Size(shape), like.dtype, like.device)
    return like.new_zeros(shape) if region is None else region.zero_()


def _huge_page_region(
    shape: torch.Size, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Return an uninitialised (zero) tensor on advised huge pages, or None where not worth it."""
    count = shape.numel()
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if device.type != "cpu" or nbytes < HUGE_PAGE_MIN_BYTES or advice is None:
        return None
    region = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr() % _HUGE_PAGE
    try:
        region.madvise(advice, start, nbytes // _HUGE_PAGE * _HUGE_PAGE)
    except OSError:  # huge pages switched off ("never"): plain pages, same values
        pass
    return torch.frombuffer(region, dtype=dtype, count=count, offset=start).view(shape)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed blocks of a few MB instead of mapping them afresh.

    A training step allocates and frees the same temporaries (a few MB each) every
    step. By default glibc maps blocks that large freshly and unmaps them on free,
    so each step pays page faults on memory it just gave back; raising the mmap
    threshold to 32 MB and the trim threshold to 256 MB keeps them in the heap
    (benchmarks/train_throughput.py measures what it saves).
    Returns whether it applied: only on Linux with glibc; elsewhere nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
        )
    except (OSError, AttributeError):
        return False
