"""Reading workload files: checks that name the file, the line and the problem."""

from __future__ import annotations

from pathlib import Path

from services.sim.errors import SimError

PAPER_COLUMNS = ("Request Time", "Model Name", "Input Length", "Output Length")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def require_file(path: Path, what: str = "workload file") -> Path:
    path = Path(path)
    if not path.exists():
        raise SimError(f"{what} {path} does not exist")
    if not path.is_file():
        raise SimError(f"{what} {path} is not a file")
    return path


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise SimError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise SimError(f"{what} {path} is not a folder")
    return path


def header_of(path: Path) -> list[str]:
    """The first line's comma-separated names, stripped (empty for an empty file)."""
    with require_file(path).open(newline="", encoding="utf-8", errors="replace") as f:
        first = f.readline()
    return [name.strip().strip('"') for name in first.strip().split(",")] if first.strip() else []


def csv_kind(path: Path) -> str | None:
    """'paper' or 'azure' from the header, None when it is neither."""
    header = set(header_of(path))
    if set(PAPER_COLUMNS) <= header:
        return "paper"
    if set(AZURE_COLUMNS) <= header:
        return "azure"
    return None


def missing_columns(path: Path, header: list[str], expected: tuple[str, ...]) -> SimError | None:
    if not header:
        return SimError(f"workload file {path} is empty; expected the header {','.join(expected)}")
    missing = [c for c in expected if c not in header]
    if missing:
        return SimError(
            f"workload file {path}: header lacks column(s) {', '.join(missing)}; expected {','.join(expected)}"
        )
    return None


def parse_count(text: str, column: str, where: str) -> int:
    """A token count: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise SimError(f"{where}: {column} {text!r} is not a whole number") from None
    if value < 1:
        raise SimError(f"{where}: {column} is {value}; it must be at least 1")
    return value
