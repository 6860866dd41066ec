"""Runtime CRDT verification: does a join obey the semilattice laws?

`verify_laws(join, values)` checks every pair/triple of the given values;
`check_crdt(join, strategy)` lets Hypothesis search for (and shrink) a counterexample.
Both report each of commutativity, associativity and idempotence separately.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

LAWS = ("commutativity", "associativity", "idempotence")


@dataclass(frozen=True)
class LawResult:
    """Outcome of one law: `holds`, and the inputs that broke it when it does not."""

    law: str
    holds: bool
    counterexample: tuple[Any, ...] | None = None
    detail: str = ""


@dataclass(frozen=True)
class LawReport:
    """One result per law; truthy when all hold."""

    results: tuple[LawResult, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(r.holds for r in self.results)

    @property
    def failed(self) -> list[str]:
        """Names of the laws that fail."""
        return [r.law for r in self.results if not r.holds]

    def __bool__(self) -> bool:
        return self.ok

    def __getitem__(self, law: str) -> LawResult:
        for r in self.results:
            if r.law == law:
                return r
        raise KeyError(law)

    def __str__(self) -> str:
        lines = []
        for r in self.results:
            mark = "ok  " if r.holds else "FAIL"
            line = f"{mark} {r.law}"
            if not r.holds:
                line += f": {r.detail}"
            lines.append(line)
        return "\n".join(lines)


def _default_eq(a: Any, b: Any) -> bool:
    return bool(a == b)


def _law_checks(
    join: Callable[[Any, Any], Any], eq: Callable[[Any, Any], bool]
) -> dict[str, Callable[..., tuple[bool, str]]]:
    def comm(a: Any, b: Any) -> tuple[bool, str]:
        ab, ba = join(a, b), join(b, a)
        return eq(ab, ba), f"join(a, b) = {ab!r} but join(b, a) = {ba!r}"

    def assoc(a: Any, b: Any, c: Any) -> tuple[bool, str]:
        left, right = join(join(a, b), c), join(a, join(b, c))
        return eq(
            left, right
        ), f"join(join(a, b), c) = {left!r} but join(a, join(b, c)) = {right!r}"

    def idem(a: Any) -> tuple[bool, str]:
        aa = join(a, a)
        return eq(aa, a), f"join(a, a) = {aa!r} but a = {a!r}"

    return {"commutativity": comm, "associativity": assoc, "idempotence": idem}


def verify_laws(
    join: Callable[[Any, Any], Any],
    values: Sequence[Any],
    eq: Callable[[Any, Any], bool] | None = None,
    max_triples: int = 20_000,
) -> LawReport:
    """Check the three laws exhaustively over `values` (pairs, and triples up to a cap).

    `eq` compares merged results (default `==`); pass one that compares rows as sets, or
    tensors with a tolerance, when `==` is too strict for your values.
    """
    eq = eq or _default_eq
    checks = _law_checks(join, eq)
    vals = list(values)
    results = []
    arities = {"commutativity": 2, "associativity": 3, "idempotence": 1}
    for law in LAWS:
        found: LawResult | None = None
        combos = itertools.product(vals, repeat=arities[law])
        for args in itertools.islice(combos, max_triples):
            holds, detail = checks[law](*args)
            if not holds:
                found = LawResult(law, False, tuple(args), detail)
                break
        results.append(found or LawResult(law, True))
    return LawReport(tuple(results))


def check_crdt(
    join: Callable[[Any, Any], Any],
    strategy: Any,
    eq: Callable[[Any, Any], bool] | None = None,
    max_examples: int = 200,
) -> LawReport:
    """Let Hypothesis search `strategy` (a SearchStrategy of values) for law violations.

    Returns a report with a shrunk counterexample per failing law; needs `hypothesis`.
    """
    from hypothesis import HealthCheck, find, settings
    from hypothesis import strategies as st
    from hypothesis.errors import NoSuchExample

    eq = eq or _default_eq
    checks = _law_checks(join, eq)
    cfg = settings(
        max_examples=max_examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    arities = {"commutativity": 2, "associativity": 3, "idempotence": 1}
    results = []
    for law in LAWS:
        check = checks[law]
        args_strategy = st.tuples(*([strategy] * arities[law]))

        def broken(args: tuple[Any, ...], check: Callable[..., tuple[bool, str]] = check) -> bool:
            try:
                return not check(*args)[0]
            except Exception:
                return True

        try:
            example = find(args_strategy, broken, settings=cfg)
        except NoSuchExample:
            results.append(LawResult(law, True))
            continue
        try:
            _, detail = check(*example)
        except Exception as exc:
            detail = f"join raised {type(exc).__name__}: {exc}"
        results.append(LawResult(law, False, tuple(example), detail))
    return LawReport(tuple(results))
