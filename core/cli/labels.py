"""``python -m core labels {export,import,stats}``: the label store from the command line.

Bad input raises ValueError subclasses (LabelImportError, LabelStoreError, DatasetError), which
``core.cli.main`` turns into exit code 2 with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.data.builtin import open_dataset
from core.errors import ConfigError
from core.labels.export import export_mvtec
from core.labels.store import LABEL_SOURCES, LABELS, LabelStore, dataset_key


def _store(args: argparse.Namespace) -> LabelStore:
    return LabelStore(args.db) if args.db else LabelStore()


def cmd_labels_export(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.format == "mvtec":

        if not args.data or not args.out:
            raise ConfigError("--format mvtec needs --data (and --category) and --out FOLDER")
        index = open_dataset(args.data, args.category)
        key = dataset_key(args.data, index.category)
        summary = export_mvtec(index, args.out, store=store, dataset=key, source=args.source, overwrite=args.overwrite)
        tests = ", ".join(f"{k} {v}" for k, v in summary["test"].items()) or "none"
        print(f"MVTec layout written to {summary['out']}: train/good {summary['train_good']}, test: {tests}; "
              f"{summary['masks']} mask(s); left out: {summary['excluded_unsure']} unsure, {summary['excluded_unknown']} unknown")
        for path, reason in summary["skipped"]:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        return 0
    dataset = dataset_key(args.data, args.category) if args.data else args.dataset
    export = store.export_csv if args.format == "csv" else store.export_json
    text = export(args.out, dataset)
    if args.out:
        print(f"{store.count(dataset)} label(s) written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_labels_import(args: argparse.Namespace) -> int:
    store = _store(args)
    result = store.import_file(args.file, author=args.author, check_paths=not args.no_check)
    print(f"imported {result.rows} label(s) from {args.file}: {result.changed} changed, {result.unchanged} unchanged")
    for ds in result.unverified:
        print(f"warning: dataset {ds} could not be opened as a dataset; each of its paths was found on disk as an image "
              "file", file=sys.stderr)
    return 0


def cmd_labels_stats(args: argparse.Namespace) -> int:
    stats = _store(args).stats(args.dataset)
    if args.json:
        print(json.dumps(stats))
        return 0

    def line(d: dict) -> str:
        return f"{d['total']} label(s): " + ", ".join(f"{lab} {d[lab]}" for lab in LABELS) + f"; {d['with_mask']} with a mask"

    print(f"{line(stats)}; {stats['changes']} change(s) in the history  ({stats['db']})")
    for ds, d in stats["datasets"].items():
        types = ", ".join(f"{k} {v}" for k, v in d["defect_types"].items())
        print(f"  {ds}: {line(d)}" + (f"; defect types: {types}" if types else ""))
    return 0


def add_labels_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``labels export|import|stats`` to the top-level sub-commands."""
    lab = sub.add_parser("labels", help="the label store: export, import, stats")
    lsub = lab.add_subparsers(dest="labels_command", required=True)
    db_help = "label database (default <workspace>/labels.sqlite)"

    ex = lsub.add_parser("export", help="write the labels as CSV or JSON (stdout by default), or a dataset in the MVTec layout")
    ex.add_argument("--format", choices=["csv", "json", "mvtec"], default="csv")
    ex.add_argument("--out", help="output file (csv/json; default stdout) or folder (mvtec)")
    ex.add_argument("--dataset", help="only this dataset key (e.g. builtin:synthetic/bottle)")
    ex.add_argument("--data", help="dataset spec: builtin:NAME or a folder (required for mvtec; else selects the dataset)")
    ex.add_argument("--category", help="category of --data (default the first)")
    ex.add_argument("--source", choices=list(LABEL_SOURCES), default="merged", help="mvtec: which labels decide the folders")
    ex.add_argument("--overwrite", action="store_true", help="mvtec: replace an earlier export of this tool in --out (marked .anomalylab-export; never any other folder)")
    ex.add_argument("--db", help=db_help)
    ex.set_defaults(func=cmd_labels_export)

    im = lsub.add_parser("import", help="apply a CSV (dataset,path,label[,...]) or JSON file in one transaction: all or nothing")
    im.add_argument("file", type=Path)
    im.add_argument("--author", help="author of rows without one (default the login name)")
    im.add_argument("--no-check", action="store_true", help="do not open the datasets to check the paths")
    im.add_argument("--db", help=db_help)
    im.set_defaults(func=cmd_labels_import)

    st = lsub.add_parser("stats", help="counts per label, dataset and defect type")
    st.add_argument("--dataset", help="only this dataset key")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--db", help=db_help)
    st.set_defaults(func=cmd_labels_stats)
