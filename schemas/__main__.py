"""``python -m schemas validate FILE --schema NAME`` and ``python -m schemas list``.

FILE is a JSON document, ``-`` for stdin, or a captured stream (what ``curl -N`` prints): a
``text/event-stream`` body, whose every ``data:`` event is checked, or NDJSON (Ollama's
streams), whose every line is. An error event or line, which a server sends when a stream
fails after it started, is checked against the protocol's error envelope.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .validation import names, validate


def _error_schema(schema: str) -> str:
    """Each protocol's errors have their own envelope: ollama_error for ollama_*, and so on."""
    prefix = schema.split("_", 1)[0]
    return f"{prefix}_error" if prefix in ("ollama", "anthropic", "llamacpp") else "error"


def _items(text: str, schema: str, each: bool) -> list[tuple[str, Any, str]]:
    """(label, value, schema name) triples; the label prefixes problems when there are several."""
    if text.lstrip().startswith(("data:", "event:")):  # SSE: OpenAI's data-only, Anthropic's and Responses' named events
        events = [line[len("data:"):].strip() for line in text.splitlines() if line.startswith("data:")]
        values = [json.loads(data) for data in events if data != "[DONE]"]
        return [(f"[{i}]", v, _error_schema(schema) if isinstance(v, dict) and "error" in v else schema)
                for i, v in enumerate(values)]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if "Extra data" not in exc.msg:
            raise
        values = [json.loads(line) for line in text.splitlines() if line.strip()]  # NDJSON (Ollama's streams)
        return [(f"[{i}]", v, _error_schema(schema) if isinstance(v, dict) and "error" in v else schema)
                for i, v in enumerate(values)]
    if not each:
        return [("", value, schema)]
    if not isinstance(value, list):
        raise ValueError("--each needs a JSON array")
    return [(f"[{i}]", item, schema) for i, item in enumerate(value)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas", description="The API's JSON Schemas.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print the schema names")
    check = commands.add_parser("validate", help="exit 0 if valid, else 1 and one problem per line")
    check.add_argument("file", help="a JSON file, '-' for stdin, or a text/event-stream capture")
    check.add_argument("--schema", required=True, choices=names(), metavar="NAME",
                       help="one of: " + ", ".join(names()))
    check.add_argument("--each", action="store_true", help="the file is a JSON array: validate each item")
    args = parser.parse_args(argv)

    if args.command == "list":
        print("\n".join(names()))
        return 0
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        items = _items(text, args.schema, args.each)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    problems = [f"{label} {p}".lstrip() for label, value, name in items for p in validate(value, name)]
    if problems:
        print("\n".join(problems))
        if any(not name.endswith("error") and isinstance(value, dict) and "error" in value for _, value, name in items):
            print(f"(the server answered with an error envelope: check it with --schema {_error_schema(args.schema)})")
        return 1
    print(f"OK: valid {args.schema}" + (f" ({len(items)} items)" if len(items) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
