"""Category names: STL-style paths ("Apparel & Accessories|Shoes") and the short names users type."""
from __future__ import annotations

from collections.abc import Iterable


def short_category(name: str) -> str:
    """The last part of an STL-style category path ("Apparel & Accessories|Shoes" -> "Shoes")."""
    return str(name).rsplit("|", 1)[-1].strip() or str(name)


def match_category(name: str, known: Iterable[str]) -> str | None:
    """`name` itself when known, else the one known category whose full name or last '|' part equals
    it case-insensitively; None when there is no such match or more than one."""
    known = list(known)
    if name in known:
        return name
    wanted = str(name).strip().casefold()
    matches = [c for c in known if wanted in (c.casefold(), short_category(c).casefold())]
    return matches[0] if len(matches) == 1 else None
