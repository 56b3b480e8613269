"""spectrafm_hf.cpu_allocator: after reuse_large_allocations() a large tensor comes from glibc's heap,
not from a fresh memory mapping (checked in a child process: the setting is process-wide)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent('''
    import ctypes
    import torch
    from spectrafm_hf.cpu_allocator import reuse_large_allocations

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                          "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def mapped_mb_while_a_64mb_tensor_lives():
        tensor = torch.ones(16 * 1024 * 1024)  # 64 MB
        mapped = libc.mallinfo2().hblkhd / 2**20  # bytes held in mmap()ed blocks
        del tensor
        return mapped

    print(mapped_mb_while_a_64mb_tensor_lives())
    assert reuse_large_allocations()
    print(mapped_mb_while_a_64mb_tensor_lives())
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_large_tensors_come_from_the_heap_instead_of_fresh_mappings():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    if "mallinfo2" in done.stderr:
        pytest.skip("this C library has no mallinfo2 (glibc < 2.33)")
    assert done.returncode == 0, done.stderr[-2000:]
    default, heap = (float(line) for line in done.stdout.split())
    assert default >= 64  # control: glibc maps every allocation above 32 MB afresh
    assert heap < 64
