"""The relative rule's linearised loop (docs/controllers.md, "Why the relative rule, and why it is
stable"): the largest pole radius over a grid of plants, and how far past s = 1 the loop holds.

The closed loop with the integral step κ, the proportional gain κ_p, the EMA β and L ∈ {0, 1} extra
steps of reading lag, on a plant that relaxes a fraction d per step with elasticity
s = d log H / d log α, has the characteristic polynomial

    (z − 1)(z − 1 + d)·(z − β)·z^L + d·s·(1 − β)·(κ·z + κ_p·(z − 1)) = 0

(docs/controllers.md writes it with a common factor z). Per setting: the largest pole radius over
d ∈ [0.003, 1] (log grid) × s ∈ (0, 1] × L ∈ {0, 1}; s_max, the largest s on a 0.1 grid up to 4 with
every pole inside the unit circle for every d and L; and the slow-loop damping coefficient
ζ/√(d·s) = κ_p/(2·√κ). Writes benchmarks/results/loop_poles.{json,md}.

    python benchmarks/loop_poles.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: (κ, κ_p, β): today's defaults, the first relative defaults, and neighbours
SETTINGS: list[tuple[float, float, float]] = [
    (0.05, 2.0, 0.8),
    (0.15, 2.0, 0.8),
    (0.1, 1.0, 0.5),
    (0.15, 1.0, 0.8),
    (0.15, 1.5, 0.8),
    (0.15, 3.0, 0.8),
    (0.15, 2.0, 0.9),
    (0.15, 1.5, 0.9),
]
#: a second integrator (a velocity v of log α, v_{t+1} = v_t + κ_v·e_t, added to the integral's step):
#: the gains tried at the defaults' κ, κ_p, β
VELOCITY_GAINS: list[float] = [0.0002, 0.0005, 0.001, 0.002, 0.005]
D_GRID = np.geomspace(0.003, 1.0, 60)
S_GRID = np.linspace(0.05, 1.0, 20)
LAGS = (0, 1)


def radius(kappa: float, kappa_p: float, beta: float, d: float, s: float, lag: int) -> float:
    """The largest |z| among the closed loop's poles."""
    plant = np.polynomial.polynomial.Polynomial  # coefficients low → high
    left = plant([-1.0, 1.0]) * plant([d - 1.0, 1.0]) * plant([-beta, 1.0]) * plant([0.0] * lag + [1.0])
    right = d * s * (1.0 - beta) * plant([-kappa_p, kappa + kappa_p])
    return float(np.abs((left + right).roots()).max())


def radius_with_velocity(
    kappa: float, kappa_p: float, kappa_v: float, beta: float, d: float, s: float, lag: int
) -> float:
    """The largest |z| with a velocity term: I_{t+1} = I_t + κ·e_t + v_{t+1}, v_{t+1} = v_t + κ_v·e_t,

    (z − 1)²(z − 1 + d)·(z − β)·z^L + d·s·(1 − β)·(κ·z(z − 1) + κ_v·z² + κ_p·(z − 1)²) = 0."""
    plant = np.polynomial.polynomial.Polynomial
    left = plant([-1.0, 1.0]) ** 2 * plant([d - 1.0, 1.0]) * plant([-beta, 1.0]) * plant([0.0] * lag + [1.0])
    control = (
        kappa * plant([0.0, -1.0, 1.0]) + kappa_v * plant([0.0, 0.0, 1.0]) + kappa_p * plant([1.0, -2.0, 1.0])
    )
    return float(np.abs((left + d * s * (1.0 - beta) * control).roots()).max())


def slowest_unstable(kappa: float, kappa_p: float, kappa_v: float, beta: float) -> dict[str, float]:
    """With a velocity term: how many plants of the grid (d × s ≤ 1 × both lags) lose stability, and
    the largest d·s among them (every plant of the grid with a larger d·s is stable)."""
    unstable = [
        float(d * s)
        for d in D_GRID
        for s in S_GRID
        if max(radius_with_velocity(kappa, kappa_p, kappa_v, beta, float(d), float(s), lag) for lag in LAGS)
        >= 1.0
    ]
    return {"unstable_plants": len(unstable), "largest_unstable_ds": max(unstable, default=0.0)}


def largest_radius(kappa: float, kappa_p: float, beta: float) -> float:
    return max(
        radius(kappa, kappa_p, beta, float(d), float(s), lag) for d in D_GRID for s in S_GRID for lag in LAGS
    )


def s_max(kappa: float, kappa_p: float, beta: float, top: float = 4.0) -> float:
    """The largest s (0.1 grid) up to which every pole is inside the unit circle on every d and lag."""
    d_grid = np.geomspace(0.003, 1.0, 25)
    last = 0.0
    for s in np.arange(0.1, top + 1e-9, 0.1):
        if max(radius(kappa, kappa_p, beta, float(d), float(s), lag) for d in d_grid for lag in LAGS) >= 1.0:
            return round(last, 1)
        last = float(s)
    return round(last, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    args = parser.parse_args()
    rows = [
        {
            "step": kappa,
            "proportional": kappa_p,
            "smoothing": beta,
            "largest_radius_s_le_1": round(largest_radius(kappa, kappa_p, beta), 4),
            "s_max": s_max(kappa, kappa_p, beta),
            "zeta_per_sqrt_ds": round(kappa_p / (2.0 * kappa**0.5), 2),
        }
        for kappa, kappa_p, beta in SETTINGS
    ]
    kappa, kappa_p, beta = SETTINGS[0]
    velocity = [
        {"velocity": kappa_v, **slowest_unstable(kappa, kappa_p, kappa_v, beta)} for kappa_v in VELOCITY_GAINS
    ]
    for v in velocity:
        v["largest_unstable_ds"] = round(v["largest_unstable_ds"], 5)
    lines = _table(rows)
    velocity_lines = _table(velocity)
    print("\n".join(lines) + "\n\n" + "\n".join(velocity_lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loop_poles.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "loop_poles_velocity.json").write_text(json.dumps(velocity, indent=2) + "\n")
    (out / "loop_poles.md").write_text(
        "# The relative rule's linearised loop\n\n`python benchmarks/loop_poles.py`: the largest pole radius "
        "over d ∈ [0.003, 1] × s ∈ (0, 1] × one step of lag or none; s_max, the largest elasticity on a 0.1 "
        "grid with every pole inside the unit circle; ζ/√(d·s), the slow-loop damping.\n\n"
        + "\n".join(lines)
        + f"\n\nWith a second integrator (a velocity of log α, gain κ_v) at κ = {kappa}, κ_p = {kappa_p}, "
        f"β = {beta}: the plants of the same grid (s ≤ 1) that lose stability, and the largest d·s among them "
        '(docs/controllers.md, "Why no second integrator").\n\n' + "\n".join(velocity_lines) + "\n"
    )


def _table(rows: list[dict[str, float]]) -> list[str]:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]


if __name__ == "__main__":
    main()
