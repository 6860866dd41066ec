"""Sorting tabular key codes: polars' sort against numpy's, measured in one run.

The vectorised table merge sorts unsigned 64-bit key codes (code and row number packed into
one word, and arg-sorts of codes too wide for that). `crdtd/data/sort_codes.py` hands those
of 65,536 codes and more to polars; this prints, for `--n` codes shaped like the packed ones
(a 21-bit key and a 21-bit row number) and for 64-bit codes to arg-sort (alone, and with
the codes in sorted order, as the text keys' first bytes need), numpy's time, polars' and
`sort_speedup_vs_numpy` / `argsort_speedup_vs_numpy` / `argsort_sorted_speedup_vs_numpy`
(numpy's sort takes its AVX-512 path where the CPU has it, which on AMD Zen 4 is several
times slower than its AVX2 one).

  python benchmarks/bench_sort_codes.py [--n 2000000]
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_strategies import best_of  # (this script's folder is on sys.path)

from crdtd.data import sort_codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000_000, help="codes per sort")
    n = ap.parse_args().n
    rng = np.random.default_rng(0)
    packed = (rng.integers(0, 1 << 21, n).astype(np.uint64) << np.uint64(21)) | np.arange(
        n, dtype=np.uint64
    )
    wide = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    assert np.array_equal(sort_codes.sorted_u64(packed), np.sort(packed))
    assert np.array_equal(wide[sort_codes.argsort_u64(wide)], np.sort(wide))
    order, ordered = sort_codes.argsort_sorted_u64(wide)
    assert np.array_equal(wide[order], ordered) and np.array_equal(ordered, np.sort(wide))

    def numpy_argsort_sorted(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(a)
        return order, a[order]

    for label, mine, numpy_way, a in (
        ("sort", sort_codes.sorted_u64, np.sort, packed),
        ("argsort", sort_codes.argsort_u64, np.argsort, wide),
        ("argsort_sorted", sort_codes.argsort_sorted_u64, numpy_argsort_sorted, wide),
    ):
        numpy_t = best_of(lambda f=numpy_way, a=a: f(a))
        polars_t = best_of(lambda f=mine, a=a: f(a))
        print(
            f"{label} of {n} uint64 codes: numpy {numpy_t * 1e3:.1f} ms, polars "
            f"{polars_t * 1e3:.1f} ms, {label}_speedup_vs_numpy {numpy_t / polars_t:.2f}"
        )


if __name__ == "__main__":
    main()
