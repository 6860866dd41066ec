"""Symbiotic Lattice Trust: evidence about peers, pure scores, gating and revocation.

`assess(entries, keys, policy)` turns a node's evidence and revocation entries into scores
and revocations; `gate` says who a namespace leaves out and why; `plan_materialisation`
picks the namespace's robust aggregator and trust weights. See docs/trust.md.
"""

from crdtd.trust.evidence import (
    WEIGHT_UNIT,
    Evidence,
    ProofKind,
    Verdict,
    check_proof,
    evidence_entry,
)
from crdtd.trust.gating import (
    Assessment,
    Exclusion,
    FederationPolicy,
    NamespacePolicy,
    Revocations,
    assess,
    auto_revocation,
    collect_revocations,
    gate,
)
from crdtd.trust.scores import SCALE, Fault, TrustParams, TrustScores, compute_scores
from crdtd.trust.weighting import MaterialisePlan, WeightedInput, plan_materialisation

__all__ = [
    "SCALE",
    "WEIGHT_UNIT",
    "Assessment",
    "Evidence",
    "Exclusion",
    "Fault",
    "FederationPolicy",
    "MaterialisePlan",
    "NamespacePolicy",
    "ProofKind",
    "Revocations",
    "TrustParams",
    "TrustScores",
    "Verdict",
    "WeightedInput",
    "assess",
    "auto_revocation",
    "check_proof",
    "collect_revocations",
    "compute_scores",
    "evidence_entry",
    "gate",
    "plan_materialisation",
]
