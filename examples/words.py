"""Word frequencies over a folder of text files.

    madhatter run examples/words.py                          # a generated sample corpus
    madhatter run examples/words.py --param folder=~/notes   # your own .txt files

Each file is read and counted in parallel (``@parallel.map``: one file in, one Counter out); the
final step merges the counts. With no ``folder`` the example writes a reproducible sample corpus
to the system's temporary directory (never into your working tree).
"""

from __future__ import annotations

import random
import re
import tempfile
from collections import Counter
from pathlib import Path

from madhatter import depends, parallel, postprocess, preprocess

WORD = re.compile(r"[a-z']+")
VOCABULARY = WORD.findall(
    "the quick brown fox jumps over a lazy dog while hatters mad and march hares drink tea "
    "at six o'clock forever because time stood still for them in wonderland long ago"
)


def sample_corpus(files: int) -> Path:
    """Write ``files`` reproducible text files to a temporary folder and return the folder."""
    folder = Path(tempfile.gettempdir()) / f"madhatter-words-sample-{files}"
    folder.mkdir(exist_ok=True)
    rng = random.Random(42)
    for index in range(files):
        path = folder / f"doc{index:05d}.txt"
        words = rng.choices(VOCABULARY, k=2_000)
        text = "\n".join(" ".join(words[i : i + 12]) for i in range(0, len(words), 12))
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return folder


@preprocess
def text_files(folder: str = "", files: int = 200) -> list[Path]:
    """The .txt files to count: those under ``folder``, or a generated sample of ``files``."""
    root = Path(folder).expanduser() if folder else sample_corpus(files)
    return sorted(root.rglob("*.txt"))


@depends(text_files)
@parallel.map
def count_words(path: Path) -> Counter[str]:
    """Count the words of one file (lower-cased)."""
    return Counter(WORD.findall(path.read_text(errors="replace").lower()))


@depends(count_words)
@postprocess
def top_words(counts: list[Counter[str]], top: int = 10) -> list[tuple[str, int]]:
    """Merge the per-file counts and return the ``top`` most common words."""
    total: Counter[str] = Counter()
    for count in counts:
        total.update(count)
    return total.most_common(top)
