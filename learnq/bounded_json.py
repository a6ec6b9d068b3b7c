"""How deep the JSON of a learnq model file may nest, checked before it is parsed.

No paper. Python's ``json`` parser recurses once per level of nested arrays and objects, so a crafted model file of
a few kilobytes (200,000 levels of ``[``) ends ``json.loads`` in a RecursionError. learnq bounds every JSON text of
a model file (the safetensors header, the learnq header, the metadata) to :data:`MAX_JSON_DEPTH` levels, far more
than it writes (its metadata nests about 8 deep): :func:`learnq.checkpoint.read` refuses a deeper file with a
CheckpointError before parsing it, and :func:`learnq.checkpoint.save` refuses metadata that would be deeper.
"""

from __future__ import annotations

import re

MAX_JSON_DEPTH = 64
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # a string (skipped), or a bracket


def json_too_deep(text: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON ``text`` nests arrays and objects more than ``limit`` deep (brackets in strings do not
    count); stops at the first level past the limit, so a crafted file costs no more than its first brackets."""
    depth = 0
    for match in _TOKENS.finditer(text):
        char = text[match.start()]
        if char == 0x22:  # a string
            continue
        if char in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


__all__ = ["MAX_JSON_DEPTH", "json_too_deep"]
