"""Name → strategy registry; `crdtd merge --list` prints from here."""

from __future__ import annotations

from collections.abc import Callable

from crdtd.errors import UnknownStrategyError, echo
from crdtd.strategies.base import Param, PrepareFn, Strategy, StrategyFn

_REGISTRY: dict[str, Strategy] = {}


def register(
    name: str,
    *,
    params: tuple[Param, ...] = (),
    family: str = "standard",
    paper: str = "",
    formula: str = "",
    needs_base: bool = False,
    min_inputs: int = 1,
    max_inputs: int | None = None,
    stochastic: bool = False,
    needs_extras: tuple[str, ...] = (),
    elementwise: bool = False,
    prepare: PrepareFn | None = None,
    uses_base: bool = True,
    propagates_nonfinite: bool = False,
    chunk_seeded: bool = False,
    raw_inputs: bool = False,
    prepare_samples: bool = False,
) -> Callable[[StrategyFn], StrategyFn]:
    """Decorator: register `fn` under `name` with its declared parameters.

    `elementwise` and `prepare` declare that `fn` may run block by block (`Strategy.blockwise`);
    `uses_base=False` says `fn` never reads the base, so the engine need not load it;
    `propagates_nonfinite=True` says a NaN or Inf in any input (or the base) always gives a
    non-finite result entry, so the engine checks the result instead of every input (and the
    inputs only to name the culprit; with a `prepare`, only where `fn` is given the prepared
    state, as a `prepare` decides from the values); `chunk_seeded=True` says a stochastic `fn` draws only
    from `base.chunk_seed` streams, so it too may run block by block; `raw_inputs=True` says
    `fn` and its `prepare`'s per-block function take a block whose `TensorMerge.raw` holds
    the inputs as read (`RawInputs`): they call `raw.widen()` before reading the float32
    tensors, and refuse NaN/Inf themselves otherwise; `prepare_samples=True` says the
    `prepare` starts from `blocks.sample(sample_stride(n))`, which the engine then takes
    while it hashes the inputs.
    """

    def deco(fn: StrategyFn) -> StrategyFn:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        doc = (fn.__doc__ or "").strip()
        _REGISTRY[name] = Strategy(
            name=name,
            fn=fn,
            params=params,
            family=family,
            paper=paper,
            formula=formula,
            needs_base=needs_base,
            min_inputs=min_inputs,
            max_inputs=max_inputs,
            stochastic=stochastic,
            needs_extras=needs_extras,
            elementwise=elementwise,
            prepare=prepare,
            uses_base=uses_base,
            propagates_nonfinite=propagates_nonfinite,
            chunk_seeded=chunk_seeded,
            raw_inputs=raw_inputs,
            prepare_samples=prepare_samples,
            summary=doc.splitlines()[0] if doc else "",
        )
        return fn

    return deco


def get(name: str) -> Strategy:
    """The strategy registered as `name`, or `UnknownStrategyError` listing close names."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, sorted(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownStrategyError(
            f"unknown strategy {echo(name)}{hint} (`crdtd merge --list` shows all)"
        ) from None


def names() -> list[str]:
    """All registered strategy names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def all_strategies() -> list[Strategy]:
    """All registered strategies, sorted by name."""
    _load_all()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def _load_all() -> None:
    """Import every strategy module so their `@register` lines run."""
    import crdtd.strategies  # noqa: F401  (the package imports each family module)
