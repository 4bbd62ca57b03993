"""For tests that run the `tokenpool` command: where it is, and what its children left behind."""

import sys
from pathlib import Path

TOKENPOOL = Path(sys.executable).parent / "tokenpool"


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the running processes that contain `text` (a test's tmp_path, say)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            found.append(argv)
    return found
