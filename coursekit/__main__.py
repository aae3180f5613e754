"""``coursekit``: generate the labs, read checkpoint logs, check a server's conformance.

    coursekit labs [generate]             regenerate labs/ from solutions/
    coursekit labs --check                exit 1 if labs/ differs from what would be generated
    coursekit checkpoint show [LOG]       the log as a table (default: your log)
    coursekit checkpoint compare LOG REF  how a machine differs from a reference
    coursekit checkpoint merge LOG...     a room's logs, a table per machine
    coursekit machine                     this machine's record fields, as JSON
    coursekit export NOTEBOOK...          write notebooks' %%export cells into myserver/, without running them
    coursekit export --solutions NN       ... the solutions of labs 01 to NN (to continue from them)
    coursekit conform --base-url URL      check an OpenAI-compatible server, a row per feature
    coursekit exam --base-url URL         the same: the course's final exam
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import checkpoint, export, generate, report


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _labs(args: argparse.Namespace) -> int:
    root = checkpoint.repository_root()
    solutions = Path(args.solutions) if args.solutions else root / "solutions"
    labs = Path(args.labs) if args.labs else root / "labs"
    check = args.check or args.action == "check"
    try:
        result = generate.generate(solutions, labs, check=check, root=root if solutions.is_relative_to(root) else None)
    except generate.GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in result.written:
        print(f"wrote {_shown(path)}")
    for path, diff in result.stale:
        print(f"{_shown(path)} is not what {solutions.name}/ generates", file=sys.stderr)
        print(diff, file=sys.stderr)
    for path in result.orphans:
        print(f"{_shown(path)} has no solution notebook (labs are generated; remove it or add "
              f"{solutions.name}/{path.name})", file=sys.stderr)
    if check:
        if result.ok:
            print(f"labs up to date ({len(result.unchanged)} notebooks)")
        else:
            print("run `python -m coursekit labs` to regenerate", file=sys.stderr)
    elif not result.written:
        print(f"labs up to date ({len(result.unchanged)} notebooks)")
    return 0 if result.ok else 1


def _read(path: str) -> list[dict]:
    records, problems = checkpoint.read_log(path)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    return records


def _checkpoint(args: argparse.Namespace) -> int:
    try:
        if args.action == "show":
            log = args.logs[0] if args.logs else str(checkpoint.default_log())
            print(f"{log}\n")
            print(report.show(_read(log)))
        elif args.action == "compare":
            if len(args.logs) != 2:
                print("usage: coursekit checkpoint compare LOG REFERENCE", file=sys.stderr)
                return 2
            mine, ref = args.logs
            print(report.compare(_read(mine), _read(ref), mine_name=mine, ref_name=ref))
        else:
            if not args.logs:
                print("usage: coursekit checkpoint merge LOG... [-o MERGED.jsonl]", file=sys.stderr)
                return 2
            text, merged = report.merge([(log, _read(log)) for log in args.logs])
            print(text)
            if args.output:
                Path(args.output).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged),
                                             encoding="utf-8")
                print(f"\nwrote {len(merged)} records to {args.output}")
    except FileNotFoundError as exc:
        print(f"error: no such log: {exc.filename}", file=sys.stderr)
        return 2
    return 0


def _export(args: argparse.Namespace) -> int:
    root = Path(args.to).resolve() if args.to else export.package_root()
    notebooks = [Path(n) for n in args.notebooks]
    if args.solutions:
        folder = checkpoint.repository_root() / "solutions"
        notebooks += [p for p in sorted(folder.glob("*.ipynb")) if p.stem[:2] <= args.solutions.zfill(2)]
    if not notebooks:
        print("usage: coursekit export NOTEBOOK... | --solutions NN [--to FOLDER]", file=sys.stderr)
        return 2
    try:
        touched = export.export_notebooks(notebooks, root)
    except (export.ExportError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in touched:
        print(f"wrote {_shown(path)}")
    print(f"{len(touched)} modules from {len(notebooks)} notebooks in {_shown(export.package_dir(root))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coursekit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    labs = sub.add_parser("labs", help="generate labs/ from solutions/ (or --check them)")
    labs.add_argument("action", nargs="?", choices=["generate", "check"], default="generate")
    labs.add_argument("--check", action="store_true", help="write nothing; exit 1 if labs/ is stale")
    labs.add_argument("--solutions", help="solutions folder (default: solutions/ of the repository)")
    labs.add_argument("--labs", help="labs folder (default: labs/ of the repository)")
    labs.set_defaults(run=_labs)

    cp = sub.add_parser("checkpoint", help="read checkpoint logs")
    cp.add_argument("action", choices=["show", "compare", "merge"])
    cp.add_argument("logs", nargs="*", metavar="LOG")
    cp.add_argument("-o", "--output", help="merge: also write the merged records to this JSONL file")
    cp.set_defaults(run=_checkpoint)

    machine = sub.add_parser("machine", help="print this machine's description (JSON)")
    machine.set_defaults(run=lambda _: print(json.dumps(checkpoint.machine_info(), indent=2)) or 0)

    ex = sub.add_parser("export", help="write notebooks' %%%%export cells into your package, without running them")
    ex.add_argument("notebooks", nargs="*", metavar="NOTEBOOK")
    ex.add_argument("--solutions", metavar="NN", help="export the solutions of labs 01 to NN")
    ex.add_argument("--to", metavar="FOLDER", help="the folder that holds myserver/ "
                                                  "(default: $COURSE_PACKAGE_DIR, else the repository root)")
    ex.set_defaults(run=_export)
    from . import conform as conform_module
    conform = sub.add_parser("conform", aliases=["exam"], help="check a server against OpenAI's API, feature by "
                             "feature (exit 0 if every required feature passes)",
                             description=conform_module.__doc__.split("\n")[0].replace("``", ""))
    conform_module.add_arguments(conform)
    conform.set_defaults(run=conform_module.main)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
