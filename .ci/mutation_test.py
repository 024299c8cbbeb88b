"""A small mutation tester for `keras_attention/ops/` and `keras_attention/masks.py`.

Each mutant changes one operator or constant of the module's code (not docstrings
or error messages), the module is reloaded in place and the selected tests run
with `-x`; a mutant survives when every test passes. TensorFlow is imported once,
so a mutant costs only its tests. Prints one line per surviving mutant and a score.

    python .ci/mutation_test.py [--modules ops.attention masks] [--tests tests/test_ops.py ...]

(mutmut 3 copies the project into `mutants/` and runs pytest there, which conflicts
with the editable install of this repository; this script is the bounded
alternative.)
"""

import argparse
import ast
import importlib
import io
import os
import signal
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.And: ast.Or,
    ast.Or: ast.And,
}


def _skip_nodes(tree):
    """Docstrings and everything inside `raise` statements (error messages)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise):
            skip.update(id(n) for n in ast.walk(node))
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            skip.update(id(n) for n in ast.walk(body[0]))
    return skip


def _sites(tree):
    """(node, kind, description) for every mutation site, in a stable order."""
    skip = _skip_nodes(tree)
    sites = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        line = getattr(node, "lineno", None)
        if isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in SWAPS:
            new = SWAPS[type(node.op)].__name__
            sites.append((node, "op", f"line {line}: {type(node.op).__name__} -> {new}"))
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in SWAPS:
                    new = SWAPS[type(op)].__name__
                    sites.append(((node, i), "cmp", f"line {line}: {type(op).__name__} -> {new}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            sites.append((node, "unary", f"line {line}: drop {type(node.op).__name__}"))
        elif isinstance(node, ast.Constant) and type(node.value) in (bool, int, float):
            value = node.value
            new = (
                (not value)
                if isinstance(value, bool)
                else (value + 1 if isinstance(value, int) else value * 2 if value else 1.0)
            )
            sites.append((node, ("const", new), f"line {line}: {value!r} -> {new!r}"))
    return sites


class _Apply(ast.NodeTransformer):
    def __init__(self, target, kind):
        self.target, self.kind = target, kind

    def generic_visit(self, node):
        node = super().generic_visit(node)
        if self.kind == "unary" and node is self.target:
            return node.operand
        return node


def mutate(source, index):
    tree = ast.parse(source)
    target, kind, description = _sites(tree)[index]
    if kind == "op":
        target.op = SWAPS[type(target.op)]()
    elif kind == "cmp":
        node, i = target
        node.ops[i] = SWAPS[type(node.ops[i])]()
    elif isinstance(kind, tuple):
        target.value = kind[1]
    tree = _Apply(target, kind).visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree), description


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_tests(pytest, tests, deselect, timeout):
    args = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore"]
    if deselect:
        args += ["-k", deselect]
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            code = pytest.main(args + tests)
    except _Timeout:
        return "timeout"
    finally:
        signal.alarm(0)
    return "survived" if code == 0 else "killed"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--modules",
        nargs="+",
        default=["ops.attention", "ops.scores", "ops._checks", "ops.chunked", "masks"],
    )
    parser.add_argument("--tests", nargs="+", default=["tests/test_masks.py", "tests/test_ops.py"])
    parser.add_argument(
        "--deselect",
        default="not xla and not tf_function",
        help="pytest -k expression (default skips the slow XLA tests)",
    )
    parser.add_argument("--timeout", type=int, default=120)
    parser.add_argument("--only", type=int, nargs="*", help="mutant indices to run")
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        help="run a random sample of this many mutants per module "
        "(seeded; bounds the time on a busy machine)",
    )
    args = parser.parse_args()
    os.chdir(ROOT)

    import pytest

    import keras_attention  # noqa: F401  (imports TensorFlow once)

    modules = {name: importlib.import_module(f"keras_attention.{name}") for name in args.modules}
    tests = list(args.tests)
    start = time.time()
    assert run_tests(pytest, tests, args.deselect, args.timeout * 3) == "survived", (
        "the tests fail without mutations"
    )
    print(f"baseline: {time.time() - start:.0f} s", flush=True)
    totals = {"killed": 0, "survived": 0, "timeout": 0}
    for name, module in modules.items():
        path = module.__file__
        with open(path) as handle:
            original = handle.read()
        count = len(_sites(ast.parse(original)))
        chosen = range(count)
        if args.sample and args.sample < count:
            import random

            chosen = sorted(random.Random(0).sample(range(count), args.sample))
        print(f"{name}: {count} mutants, running {len(chosen)}", flush=True)
        try:
            for index in chosen:
                if args.only and index not in args.only:
                    continue
                mutated, description = mutate(original, index)
                with open(path, "w") as handle:
                    handle.write(mutated)
                try:
                    importlib.reload(module)
                    # The package re-exports the modules' functions: bind the new ones.
                    importlib.reload(importlib.import_module("keras_attention.ops"))
                    outcome = run_tests(pytest, tests, args.deselect, args.timeout)
                except Exception as error:  # noqa: BLE001  (a mutant that cannot import)
                    outcome = "killed"
                    description += f" (import: {type(error).__name__})"
                totals[outcome] += 1
                print(f"  {outcome.upper():8s} {name}.py #{index} {description}", flush=True)
        finally:
            with open(path, "w") as handle:
                handle.write(original)
            importlib.reload(module)
            importlib.reload(importlib.import_module("keras_attention.ops"))
    done = sum(totals.values())
    print(
        f"mutants {done}: killed {totals['killed']}, survived {totals['survived']}, "
        f"timeout {totals['timeout']}; score {totals['killed'] / max(done, 1):.1%} "
        f"({time.time() - start:.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
