"""Transparent huge pages for PyTorch's CPU allocations, in processes that evaluate whole images.

A CPU forward pass on whole images allocates large activations afresh for every layer, and glibc maps
each one from the OS, so a large share of the time goes to page faults on 4 KB pages. PyTorch's
`THP_MEM_ALLOC_ENABLE=1` aligns its large CPU allocations to 2 MB and asks the kernel for huge pages
(measured here: `test.py --reports` on the demo model 11.3-11.9 s instead of 15.4-15.7 s; the
sensitivity benchmark's variants 1.5-1.8x faster). PyTorch reads
the variable once, at its first allocation, so it must be set before torch is imported. This module
imports nothing heavy for that reason.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

VARIABLE = "THP_MEM_ALLOC_ENABLE"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def prefer_huge_pages(mode_file: Path = THP_MODE) -> bool:
    """Set THP_MEM_ALLOC_ENABLE=1 for this process unless the user set it (either way) or the kernel
    gives no huge pages on request (its mode is 'never', or it has no such setting). Returns whether
    PyTorch will use them; False also when torch was imported already (then it is too late)."""
    if VARIABLE in os.environ:
        return os.environ[VARIABLE] == "1"
    try:
        mode = mode_file.read_text()
    except OSError:
        return False
    if ("[always]" not in mode and "[madvise]" not in mode) or "torch" in sys.modules:
        return False
    os.environ[VARIABLE] = "1"
    return True
