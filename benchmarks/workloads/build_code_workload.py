"""Build a code workload from the Python standard library's own sources (deterministic, offline).

Each row asks for one public function or method that has a docstring, and gives the real source as the response:

    {"id": "json.decoder/JSONDecoder.decode", "class": "code",
     "prompt": "Write the method `JSONDecoder.decode(self, s, _w=WHITESPACE.match)` of the class `JSONDecoder` in Python's `json.decoder` module. Its docstring starts: \"Return the Python representation of ``s`` (a ``str`` instance\"",
     "response": "```python\ndef decode(self, s, _w=WHITESPACE.match):\n    ...\n```"}

Rows are grouped by module (the ``id`` before ``/``), so ``adaptive-spec distill --eval-split`` holds out whole
modules. Sources: ``sysconfig.get_paths()["stdlib"]`` of the running interpreter (or ``--stdlib``), minus tests,
GUI, code generators and deprecated packages; functions of 4..60 source lines; at most ``--max-rows`` rows (a
deterministic hash-ordered sample when there are more). The same Python version gives the same file.

License: the text of the responses (and of the docstrings quoted in prompts) is Python standard library source,
Copyright (c) 2001- Python Software Foundation, distributed under the PSF License Agreement (the interpreter's
``LICENSE.txt``); see ``README.md`` next to this script.

    python benchmarks/workloads/build_code_workload.py                       # -> benchmarks/workloads/code.jsonl
    python benchmarks/workloads/build_code_workload.py --spec-bench math_reasoning \\
        --traffic-out benchmarks/workloads/distill_traffic.jsonl            # + one Spec-Bench category
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import sysconfig
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC_BENCH = HERE.parents[1].parent / "shared" / "data" / "spec_bench_questions.jsonl"
EXCLUDED = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "dist-packages", "encodings",
            "pydoc_data", "distutils", "ensurepip", "tkinter", "__pycache__", "msilib", "venv"}  # fmt: skip
MIN_LINES, MAX_LINES = 4, 60


def modules(stdlib: Path) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in EXCLUDED or part.startswith(("config-", "test_")) for part in rel.parts):
            continue
        if rel.name.startswith(("test_", "_")) and rel.name != "__init__.py":
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        found.append((name, path))
    return found


def functions(module: str, source: str) -> list[dict]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines()
    rows = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            rows += _row(module, None, node, lines)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    rows += _row(module, node.name, item, lines)
    return rows


def _row(module: str, cls: str | None, node: ast.FunctionDef, lines: list[str]) -> list[dict]:
    if node.name.startswith("_"):
        return []
    doc = ast.get_docstring(node)
    first = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
    if len(first) < 12:
        return []
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    body = textwrap.dedent("\n".join(lines[start - 1 : node.end_lineno])).rstrip()
    if not MIN_LINES <= body.count("\n") + 1 <= MAX_LINES or not body.isascii():
        return []
    signature = f"{node.name}({ast.unparse(node.args)})"
    if cls is None:
        prompt = f"Write a Python function `{signature}` for the `{module}` module."
    else:
        prompt = f"Write the method `{cls}.{signature}` of the class `{cls}` in Python's `{module}` module."
    prompt += f' Its docstring starts: "{first}"'
    qualname = f"{cls}.{node.name}" if cls else node.name
    return [{"id": f"{module}/{qualname}", "class": "code", "prompt": prompt, "response": f"```python\n{body}\n```"}]


def build(stdlib: Path, max_rows: int) -> list[dict]:
    rows, seen = [], set()
    for module, path in modules(stdlib):
        for row in functions(module, path.read_text(encoding="utf-8", errors="replace")):
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                rows.append(row)
    if len(rows) > max_rows:  # a deterministic sample, spread over all modules
        rows = sorted(rows, key=lambda r: hashlib.sha1(r["id"].encode()).hexdigest())[:max_rows]
        rows.sort(key=lambda r: r["id"])
    return rows


def spec_bench_rows(path: Path, category: str) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"id": f"spec-bench-{r['question_id']}", "class": category, "prompt": r["turns"][0]}
            for r in rows if r["category"] == category]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--max-rows", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=HERE / "code.jsonl")
    parser.add_argument("--spec-bench", metavar="CATEGORY", help="also write a traffic file with this category")
    parser.add_argument("--spec-bench-file", type=Path, default=SPEC_BENCH)
    parser.add_argument("--traffic-out", type=Path, default=HERE / "distill_traffic.jsonl")
    args = parser.parse_args()
    rows = build(args.stdlib, args.max_rows)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    args.out.write_text(text)
    mods = len({r["id"].split("/")[0] for r in rows})
    print(f"{args.out}: {len(rows)} rows from {mods} modules of {args.stdlib} (Python {sys.version.split()[0]}), "
          f"{len(text.encode()) / 1e6:.2f} MB")  # fmt: skip
    if args.spec_bench:
        extra = spec_bench_rows(args.spec_bench_file, args.spec_bench)
        if not extra:
            raise SystemExit(f"no Spec-Bench rows of category {args.spec_bench!r}")
        args.traffic_out.write_text(text + "".join(json.dumps(r) + "\n" for r in extra))
        print(f"{args.traffic_out}: + {len(extra)} Spec-Bench {args.spec_bench} rows (no responses: the target answers)")


if __name__ == "__main__":
    main()
