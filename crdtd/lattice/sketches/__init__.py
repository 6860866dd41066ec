"""Apache DataSketches as lattice values: HLL and Theta (distinct counts, set operations),
KLL (quantiles) and frequent items, each behind the one `Lattice` contract.

Build a sketch from values on the site that holds them (values are hashed or summarised
locally), join sketches from other sites, and ask for an estimate with its error bounds:

    a = HllSketch.of(site_a_ids); b = HllSketch.of(site_b_ids)
    a.join(b).estimate()   # Estimate(value, lower, upper, confidence)

HLL and Theta join through the library's union; KLL and frequent items keep the set of
contributed sketches (their library merges are not idempotent) and answer queries over all
of them. See docs/sketches.md.
"""

from crdtd.lattice.sketches.common import Estimate
from crdtd.lattice.sketches.frequent import FrequentItemsSketch
from crdtd.lattice.sketches.hll import HllSketch
from crdtd.lattice.sketches.kll import KllSketch
from crdtd.lattice.sketches.theta import ThetaSketch

__all__ = ["Estimate", "FrequentItemsSketch", "HllSketch", "KllSketch", "ThetaSketch"]
