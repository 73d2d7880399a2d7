"""A small STL pair file and category file with one line of every kind the ingester must reject."""
from __future__ import annotations

import hashlib
import json


def sig(x) -> str:
    return hashlib.md5(str(x).encode()).hexdigest()


P1, P2, P3, P_NOCAT = sig("p1"), sig("p2"), sig("p3"), sig("nocat")
S1, S2 = sig("s1"), sig("s2")
CATS = {P1: "Apparel & Accessories|Shoes", P2: "Apparel & Accessories|Shoes",
        P3: "Apparel & Accessories|Clothing|Pants", sig("unused"): "Apparel & Accessories|Jewelry|Earrings"}


def pair(scene, product, bbox):
    return json.dumps({"product": product, "scene": scene, "bbox": bbox})


LINES = [
    pair(S1, P1, [0.1, 0.2, 0.5, 0.9]),                 # 1 ok
    "",                                                 # 2 blank: skipped silently
    f'{{"product": "{P2}", "scene": ',                 # 3 invalid JSON
    "[1, 2, 3]",                                        # 4 not an object
    json.dumps({"product": P2, "scene": S1}),           # 5 no bbox
    pair(S1, P2, [0.1, 0.2, 1.2, 0.9]),                 # 6 out of range
    pair(S1, P2, [-0.1, 0.2, 0.5, 0.9]),                # 7 out of range
    pair(S1, P2, [0.6, 0.2, 0.5, 0.9]),                 # 8 inverted (left > right)
    pair(S1, P2, [0.1, 0.5, 0.5, 0.5]),                 # 9 empty (top == bottom)
    pair(S1, P2, [0.1, 0.2, 0.5]),                      # 10 three numbers
    pair(S1, P2, [True, 0.2, 0.5, 0.9]),                # 11 a bool is not a coordinate
    pair(S1, P_NOCAT, [0.1, 0.2, 0.5, 0.9]),            # 12 uncategorised
    pair(S1, "NOT-HEX!", [0.1, 0.2, 0.5, 0.9]),         # 13 bad signature
    pair(S1, P1, [0.0, 0.0, 1.0, 1.0]),                 # 14 duplicate of line 1
    pair(S2, P1, [0.0, 0.0, 1.0000001, 1.0]),           # 15 ok: float noise at the edge is clamped
    pair(S2, P3, [0.25, 0.25, 0.75, 0.75]),             # 16 ok
]
EXPECTED_REJECTS = [(3, "malformed"), (4, "malformed"), (5, "malformed"), (6, "bbox_out_of_range"),
                    (7, "bbox_out_of_range"), (8, "bbox_inverted"), (9, "bbox_inverted"), (10, "malformed"),
                    (11, "malformed"), (12, "uncategorised"), (13, "malformed"), (14, "duplicate")]
