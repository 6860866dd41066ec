"""`make demo`: the library examples — a tabular merge and the laws it obeys."""

from __future__ import annotations

import sys

from crdtd import merge
from crdtd.lattice import ORSet, verify_laws


def _rows_as_set(rows: list[dict]) -> frozenset:
    """Rows as a set, with absent fields and None treated alike (merge fills the union)."""
    return frozenset(tuple(sorted((k, v) for k, v in r.items() if v is not None)) for r in rows)


def main() -> int:
    """Print the seed merge, then check commutativity/associativity/idempotence on it."""
    a = [{"id": 1, "name": "Alice"}, {"id": 2, "name": "Bob"}]
    b = [{"id": 2, "name": "Bob"}, {"id": 3, "name": "Carol"}]
    print("crdtd.merge(a, b, key='id')")
    print(merge(a, b, key="id"))

    c = [{"id": 3, "name": "Caroline", "site": "lab"}, {"id": 4, "name": "Dan"}]
    tables = [a, b, c]
    report = verify_laws(
        lambda x, y: merge(x, y, key="id"),
        tables,
        eq=lambda x, y: _rows_as_set(x) == _rows_as_set(y),
    )
    print("\nlaws of merge over three tables:")
    print(report)

    s1 = ORSet().add("model-a", "hospital-1")
    s2 = s1.remove("model-a")
    s3 = s1.add("model-a", "hospital-2")
    print("\nOR-Set, concurrent remove and re-add (add wins):", s2.join(s3).elements)
    print("laws of ORSet.join:")
    print(verify_laws(lambda x, y: x.join(y), [s1, s2, s3]))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
