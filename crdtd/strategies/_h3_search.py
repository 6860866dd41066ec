"""Seeded black-box maximisers for merge recipes: CMA-ES and a real-coded genetic algorithm.

Both draw every random number from the `torch.Generator` they are given, in a fixed order,
and break fitness ties by candidate index, so a run is a pure function of its arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Objective = Callable[[torch.Tensor], float]


@dataclass(frozen=True)
class SearchResult:
    """Best point found, its fitness and how many evaluations it took."""

    x: torch.Tensor
    fitness: float
    evaluations: int


def _ranked(fitness: list[float]) -> list[int]:
    """Indices by descending fitness; ties keep the lower index first."""
    return sorted(range(len(fitness)), key=lambda i: (-fitness[i], i))


def cma_es(
    objective: Objective,
    x0: torch.Tensor,
    sigma: float,
    population: int,
    iterations: int,
    generator: torch.Generator,
) -> SearchResult:
    """Maximise `objective` with CMA-ES (Hansen 2016 tutorial defaults, rank-μ and rank-1).

    `population` 0 picks the default λ = 4 + ⌊3 ln n⌋. The starting point counts as a
    candidate, so the result is never worse than `x0`.
    """
    n = x0.numel()
    lam = population if population > 0 else 4 + int(3 * math.log(n))
    lam = max(lam, 2)
    mu = lam // 2
    w = torch.log(torch.tensor(mu + 0.5, dtype=torch.float64)) - torch.log(
        torch.arange(1, mu + 1, dtype=torch.float64)
    )
    w = w / w.sum()
    mueff = float(1.0 / (w**2).sum())
    cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
    cs = (mueff + 2) / (n + mueff + 5)
    c1 = 2 / ((n + 1.3) ** 2 + mueff)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
    damps = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs
    chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
    mean = x0.to(torch.float64).clone()
    pc = torch.zeros(n, dtype=torch.float64)
    ps = torch.zeros(n, dtype=torch.float64)
    b = torch.eye(n, dtype=torch.float64)
    d = torch.ones(n, dtype=torch.float64)
    c = torch.eye(n, dtype=torch.float64)
    best_x, best_f = mean.clone(), objective(mean.clone())
    evals = 1
    for gen in range(iterations):
        z = torch.randn(lam, n, generator=generator, dtype=torch.float64)
        y = (z * d) @ b.T
        xs = mean + sigma * y
        fit = [objective(xs[i].clone()) for i in range(lam)]
        evals += lam
        order = _ranked(fit)
        if fit[order[0]] > best_f:
            best_x, best_f = xs[order[0]].clone(), fit[order[0]]
        y_sel = y[order[:mu]]
        y_w = w @ y_sel
        mean = mean + sigma * y_w
        inv_sqrt = (b / d) @ b.T
        ps = (1 - cs) * ps + math.sqrt(cs * (2 - cs) * mueff) * (inv_sqrt @ y_w)
        ps_norm = float(torch.linalg.vector_norm(ps))
        hsig = ps_norm / math.sqrt(1 - (1 - cs) ** (2 * (gen + 1))) / chi_n < 1.4 + 2 / (n + 1)
        h = 1.0 if hsig else 0.0
        pc = (1 - cc) * pc + h * math.sqrt(cc * (2 - cc) * mueff) * y_w
        rank_mu = (y_sel.T * w) @ y_sel
        c = (
            (1 - c1 - cmu) * c
            + c1 * (torch.outer(pc, pc) + (1 - h) * cc * (2 - cc) * c)
            + cmu * rank_mu
        )
        c = (c + c.T) / 2
        sigma *= math.exp((cs / damps) * (ps_norm / chi_n - 1))
        vals, b = torch.linalg.eigh(c)
        d = vals.clamp_min(1e-20).sqrt()
    return SearchResult(best_x, best_f, evals)


def _sbx(
    p1: torch.Tensor, p2: torch.Tensor, eta: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulated binary crossover (Deb & Agrawal 1995), each variable swapped with prob 0.5."""
    u = torch.rand(p1.shape, generator=generator, dtype=torch.float64)
    use = torch.rand(p1.shape, generator=generator, dtype=torch.float64) < 0.5
    beta = torch.where(u <= 0.5, (2 * u) ** (1 / (eta + 1)), (1 / (2 * (1 - u))) ** (1 / (eta + 1)))
    c1 = 0.5 * ((1 + beta) * p1 + (1 - beta) * p2)
    c2 = 0.5 * ((1 - beta) * p1 + (1 + beta) * p2)
    return torch.where(use, c1, p1), torch.where(use, c2, p2)


def _polynomial_mutation(
    x: torch.Tensor,
    lower: float,
    upper: float,
    eta: float,
    prob: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Bounded polynomial mutation (Deb & Goyal 1996), each variable mutated with `prob`."""
    span = upper - lower
    if span <= 0:
        return x.clone()
    hit = torch.rand(x.shape, generator=generator, dtype=torch.float64) < prob
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    d1 = (x - lower) / span
    d2 = (upper - x) / span
    power = 1 / (eta + 1)
    low = 2 * u + (1 - 2 * u) * (1 - d1) ** (eta + 1)
    high = 2 * (1 - u) + 2 * (u - 0.5) * (1 - d2) ** (eta + 1)
    dq = torch.where(u < 0.5, low.clamp_min(0) ** power - 1, 1 - high.clamp_min(0) ** power)
    return torch.where(hit, x + dq * span, x).clamp(lower, upper)


def _tournament(fitness: list[float], generator: torch.Generator) -> int:
    """Binary tournament: the fitter of two uniformly drawn indices (ties: lower index)."""
    a, b = (int(i) for i in torch.randint(len(fitness), (2,), generator=generator))
    if fitness[a] > fitness[b] or (fitness[a] == fitness[b] and a < b):
        return a
    return b


def genetic(
    objective: Objective,
    n: int,
    lower: float,
    upper: float,
    population: int,
    iterations: int,
    generator: torch.Generator,
    *,
    crossover_prob: float = 0.9,
    eta_crossover: float = 15.0,
    eta_mutation: float = 20.0,
    seeds: tuple[torch.Tensor, ...] = (),
) -> SearchResult:
    """Maximise `objective` over [lower, upper]^n with an elitist real-coded GA.

    Binary tournament selection, SBX crossover, polynomial mutation (prob 1/n), and (μ+λ)
    survival of the best `population` of parents and children: the defaults of the pymoo GA
    that Mergenetic runs. `seeds` are placed in the first generation before random members.
    """
    pop_size = max(population, 2)
    members = [s.to(torch.float64).clamp(lower, upper) for s in seeds[:pop_size]]
    rest = pop_size - len(members)
    if rest > 0:
        draws = torch.rand(rest, n, generator=generator, dtype=torch.float64)
        members += list(lower + (upper - lower) * draws)
    pop = torch.stack(members)
    fit = [objective(pop[i].clone()) for i in range(pop_size)]
    evals = pop_size
    for _ in range(iterations):
        children: list[torch.Tensor] = []
        while len(children) < pop_size:
            p1 = pop[_tournament(fit, generator)]
            p2 = pop[_tournament(fit, generator)]
            if float(torch.rand((), generator=generator, dtype=torch.float64)) < crossover_prob:
                c1, c2 = _sbx(p1, p2, eta_crossover, generator)
            else:
                c1, c2 = p1.clone(), p2.clone()
            for child in (c1, c2):
                children.append(
                    _polynomial_mutation(
                        child.clamp(lower, upper), lower, upper, eta_mutation, 1.0 / n, generator
                    )
                )
        kids = torch.stack(children[:pop_size])
        kid_fit = [objective(kids[i].clone()) for i in range(pop_size)]
        evals += pop_size
        union = torch.cat([pop, kids])
        union_fit = fit + kid_fit
        keep = _ranked(union_fit)[:pop_size]
        pop = union[keep]
        fit = [union_fit[i] for i in keep]
    best = _ranked(fit)[0]
    return SearchResult(pop[best].clone(), fit[best], evals)
