"""Process liveness: whether a process id still belongs to a running process.

One helper for the whole engine (run folders, the run list, locks). It never signals the
process: on Windows ``os.kill(pid, 0)`` would send it Ctrl+C, so Windows asks the kernel for
the exit code instead. Standard library only; imports nothing else from the engine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists (and is not a zombie on Linux)."""
    if not pid or pid <= 0:
        return False
    if sys.platform.startswith("win"):
        return _win_pid_alive(pid)
    try:
        os.kill(pid, 0)  # POSIX: signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        try:
            # field 3 is the state; "Z" (zombie) and "X" (dead) mean the process has ended
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state not in ("Z", "X")
    return True


def _win_pid_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    process_query_limited_information = 0x1000
    still_active = 259
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return False
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)
