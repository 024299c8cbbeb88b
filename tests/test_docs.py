"""The Python code blocks of the README and the guide run, from another folder,
without warnings; the guide's figures are in git and small."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUNNER = r"""
import json, sys, warnings
blocks = json.load(open(sys.argv[1]))
failures = []
for name, code in blocks:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        except Exception as error:  # report every block, not just the first
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
    for w in caught:
        if issubclass(w.category, (UserWarning, RuntimeWarning)):
            failures.append(f"{name}: {w.category.__name__}: {w.message}")
print(json.dumps(failures))
"""


def _python_blocks(path):
    with open(path) as handle:
        text = handle.read()
    # A block right after `<!-- sketch: ... -->` is an outline (needs the reader's
    # own model or hardware) and is not run.
    blocks = re.findall(r"(<!-- sketch:[^\n]*-->\n)?```python\n(.*?)```", text, re.DOTALL)
    return [code for sketch, code in blocks if not sketch]


@pytest.mark.tensorflow_only(
    "the documents' code blocks use the default backend (tf.distribute, SavedModel, .numpy())"
)
@pytest.mark.parametrize("document", ["README.md", "docs/guide.md"])
def test_code_blocks_run_from_another_folder_without_warnings(document, tmp_path):
    import json

    blocks = [
        (f"{document} block {i + 1}", code)
        for i, code in enumerate(_python_blocks(os.path.join(ROOT, document)))
    ]
    assert blocks
    blocks_file = tmp_path / "blocks.json"
    blocks_file.write_text(json.dumps(blocks))
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(blocks_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(failures)
    # Nothing written next to the caller except what the test put there and files a
    # block names explicitly (no hidden relative-path assumptions).
    leftovers = {p.name for p in tmp_path.iterdir()} - {"blocks.json"}
    assert not {n for n in leftovers if n.endswith(".keras")}, leftovers


def test_guide_figures_are_committed_small_and_referenced():
    with open(os.path.join(ROOT, "docs", "guide.md")) as handle:
        guide = handle.read()
    referenced = set(re.findall(r"\]\(images/([\w.-]+\.png)\)", guide))
    assert referenced == {
        "self_attention.png",
        "scaling.png",
        "masks.png",
        "multi_head.png",
        "additive_vs_dot.png",
        "alibi.png",
        "sliding_window.png",
    }
    total = 0
    for name in referenced:
        path = os.path.join(ROOT, "docs", "images", name)
        assert os.path.isfile(path), f"docs/images/{name} is missing"
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        total += os.path.getsize(path)
    assert total < 600_000, f"figures take {total} bytes"
