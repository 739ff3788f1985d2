"""Write vlbench/english_sentences.txt: plain English sentences from the Python standard library's
docstrings and its `pydoc` topics, for the tiny LM's pretraining (and the tiny tokenizer's vocabulary).

Why: a large LM knows far more words than a task needs; BART-base's embedding is 28% of its
parameters. The tiny LM, trained on the synthetic suite's ~30 words alone, had an embedding of a few
percent, so every method's updated-params share was inflated (README, tiny profile). These sentences
give it ~2900 real words to learn. The extract is frozen in the package because the docstrings change
between Python versions, and the shipped backbones' recipe key hashes this file.
The text is the Python Software Foundation's (PSF License Agreement), reduced to sentences.

Recipe: the docstrings (ast.get_docstring) of modules, classes and functions in the stdlib's *.py
files outside test, tests, site-packages and idlelib, plus pydoc_data.topics; paragraphs split on blank
lines, sentences on [.!?] + whitespace; lowercased, the final [.!?] dropped, commas as their own
token; kept when 5-30 tokens long and every token is a plain word ([a-z]+) or a comma; deduplicated;
then only sentences whose every word occurs at least MIN_COUNT times among the kept ones.
The committed file was made with Python 3.11.7:

    python scripts/extract_english.py            # rewrites vlbench/english_sentences.txt
"""

from __future__ import annotations

import ast
import collections
import re
import sys
import sysconfig
from pathlib import Path

import pydoc_data.topics

MIN_COUNT = 2
OUT = Path(__file__).resolve().parent.parent / "vlbench" / "english_sentences.txt"
SKIP_FOLDERS = {"test", "tests", "site-packages", "idlelib"}
WORD = re.compile(r"[a-z]+|,")


def docstrings() -> list[str]:
    texts = list(pydoc_data.topics.topics.values())
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if SKIP_FOLDERS & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately broken or not UTF-8
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    return texts


def sentences(texts: list[str], min_count: int) -> list[str]:
    kept = []
    for text in texts:
        for paragraph in re.split(r"\n\s*\n", text):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
                words = sentence.lower().rstrip(".!?").replace(",", " ,").split()
                if 5 <= len(words) <= 30 and all(WORD.fullmatch(w) for w in words):
                    kept.append(" ".join(words))
    kept = list(dict.fromkeys(kept))
    counts = collections.Counter(w for s in kept for w in s.split())
    return [s for s in kept if all(counts[w] >= min_count for w in s.split())]


if __name__ == "__main__":
    lines = sentences(docstrings(), MIN_COUNT)
    OUT.write_text("\n".join(lines) + "\n")
    words = {w for s in lines for w in s.split()}
    print(f"{OUT}: {len(lines)} sentences, {len(words)} distinct tokens (Python {sys.version.split()[0]})")
