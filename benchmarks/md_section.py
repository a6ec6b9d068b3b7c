"""Generated sections of BENCHMARKS.md: the text between a begin and an end marker line is replaced, the rest of the
file (the hand-written readings) is left as it is. No paper.

    replace_section(Path("benchmarks/BENCHMARKS.md"), "<!-- x.py: begin -->", "<!-- x.py: end -->", text)
"""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, begin: str, end: str, text: str) -> None:
    """Replace what lies between the lines ``begin`` and ``end`` of ``path`` by ``text`` (SystemExit naming the
    markers unless each is there once, in that order). The file is read right before writing: people edit the
    other sections."""
    doc = path.read_text(encoding="utf-8")
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise SystemExit(f"{path} must hold the lines {begin!r} and {end!r} once each, in that order")
    head, rest = doc.split(begin)
    body = text if text.endswith("\n") else text + "\n"
    path.write_text(f"{head}{begin}\n{body}{end}{rest.split(end, 1)[1]}", encoding="utf-8")
