"""``tokenpool models prepare|list``: fill and inspect the model store."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from shared.model_store import ModelInfo, ModelStore


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="prepare and list the models in the model store")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    prepare = actions.add_parser("prepare", help="convert the bundled SmolLM2 and create the demo models")
    prepare.add_argument("--force", action="store_true", help="rebuild models that are already prepared")
    prepare.set_defaults(handler=prepare_models)

    list_ = actions.add_parser("list", help="list the prepared models")
    list_.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    list_.set_defaults(handler=list_models)


def prepare_models(args: argparse.Namespace) -> int:
    from services.gpu_worker.engine.prepare import prepare_all

    store = ModelStore.from_env()
    prepare_all(store, force=args.force)
    print(store.root)
    return 0


def list_models(args: argparse.Namespace) -> int:
    store = ModelStore.from_env()
    infos = store.list()
    if not infos:
        print(f"no models in {store.root}; run `tokenpool models prepare`", file=sys.stderr)
    if args.json:
        print(json.dumps([{**asdict(i), "path": str(i.path)} for i in infos], indent=2))
    else:
        print(format_table(infos))
    return 0


def format_table(infos: list[ModelInfo]) -> str:
    header = ("NAME", "ARCHITECTURE", "PARAMS", "SIZE", "DTYPE", "CONTEXT", "PATH")
    rows = [header] + [
        (
            i.name,
            i.architecture,
            f"{i.parameters / 1e6:.1f}M",
            f"{i.bytes / 2**20:.1f} MiB",
            i.dtype,
            str(i.context_length or "-"),
            str(i.path),
        )
        for i in infos
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
