"""`python -m keras_attention.export --matrix [--write docs/deployment.md]`: run the
export matrix (see `keras_attention.export.matrix`) and print or write its table."""

import argparse
import sys
import time

from keras_attention.export import matrix


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_attention.export")
    parser.add_argument("--matrix", action="store_true", help="run the export matrix")
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--formats", nargs="*", help="formats (default: all of the backend)")
    parser.add_argument("--write", metavar="MARKDOWN", help="replace the table in this file")
    args = parser.parse_args(argv)
    if not args.matrix:
        parser.error("nothing to do: pass --matrix")
    start = time.time()
    results = matrix.run_matrix(
        args.cases, args.formats, log=lambda line: print(line, file=sys.stderr, flush=True)
    )
    text = matrix.table(results)
    print(text)
    print(f"({time.time() - start:.0f} s)", file=sys.stderr)
    if args.write:
        matrix.write_table(text, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
