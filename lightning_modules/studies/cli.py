"""Command line of the studies.

    python -m lightning_modules.studies NAME|all --data PREPARED --out OUT_ROOT [--size tiny|paper]
        [--set key=value ...] [--param key=value ...] [--launcher subprocess|inprocess] [--threads N]
        [--tracking-uri URI]
    python -m lightning_modules.studies report OUT_ROOT [--transfer-report PATH] [--tracking-uri URI]
    python -m lightning_modules.studies list

A study NAME runs into OUT_ROOT/NAME (variant run folders, NAME.png, verdict.json), so `report
OUT_ROOT` finds every study run there. --data is a prepared set or the prepared root (each study
picks imagenet/ or transfer/ under it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from lightning_modules.errors import ConfigError, VisionflowError
from lightning_modules.paths import prepared_dir, runs_dir
from lightning_modules.reporting.progress import log_to_stderr
from lightning_modules.studies.base import SIZES
from lightning_modules.studies.registry import STUDIES, get_study
from lightning_modules.studies.report import studies_report
from lightning_modules.studies.runner import LAUNCHERS, run_study


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lightning_modules.studies",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("name", help="a study name, 'all', 'report' or 'list'")
    p.add_argument("root", nargs="?", type=Path, help="report: the studies folder (OUT_ROOT)")
    p.add_argument("--data", type=Path, help="prepared set or prepared root (default: <project>/prepared)")
    p.add_argument("--out", type=Path, help="studies folder OUT_ROOT (default: <project>/runs/studies)")
    p.add_argument(
        "--size",
        default="default",
        choices=SIZES,
        help="default: CPU minutes on the embedded data; tiny: seconds (tests); paper: the source's scale, for a GPU",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="job override for every variant")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="study parameter (YAML value), e.g. p=[0,0.5], batch_sizes=[16,64], or seeds=[0,1,2] (any "
        "study: each variant once per seed, verdicts on the mean curves)",
    )
    p.add_argument(
        "--launcher",
        default="subprocess",
        choices=("subprocess", "inprocess"),
        help="inprocess: train in this process (saves the interpreter start-up per job)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per job (VISIONFLOW_THREADS); 1 on a shared or busy CPU machine",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or the project's)")
    p.add_argument("--transfer-report", default=None, help="report: path or URL of the transfer report to link")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    log_to_stderr()
    try:
        return _dispatch(args)
    except VisionflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.name == "list":
        for study in STUDIES.values():
            print(f"{study.name:20s} {study.question}")
        return 0
    if args.name == "report":
        root = args.root or args.out or runs_dir() / "studies"
        done = studies_report(root, transfer_report=args.transfer_report, tracking_uri=args.tracking_uri)
        print(done["path"])
        return 0
    names = list(STUDIES) if args.name == "all" else [get_study(args.name).name]
    params = {}
    for item in args.param:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected key=value, e.g. p=[0,0.5]")
        params[key] = yaml.safe_load(raw)
    root = (args.out or runs_dir() / "studies").resolve()
    data = args.data or prepared_dir()
    for name in names:
        known = list(STUDIES[name].params.model_fields)  # seeds included: every study can repeat its variants
        unknown = [k for k in params if k not in known]
        if unknown and args.name != "all":
            raise ConfigError(f"--param {', '.join(unknown)}: unknown for study {name} (known: {', '.join(known)})")
        record = run_study(
            name,
            data,
            root / name,
            launch=LAUNCHERS[args.launcher],
            tracking_uri=args.tracking_uri,
            size=args.size,
            overrides=args.set,
            params={k: v for k, v in params.items() if k in known},
            env={"VISIONFLOW_THREADS": str(args.threads)} if args.threads else None,
        )
        print(
            json.dumps(
                {
                    "study": name,
                    "seconds": record["seconds"],
                    "verdict": record["text"],
                    "plot": str(root / name / record["plot"]),
                }
            )
        )
    return 0
