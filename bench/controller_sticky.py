"""Sticky users for the controller benchmark: their calls, and the per-unit sums a log query returns.

`bench/controller_bench.py` simulates canaries of routes whose split is per user. Each of
``runs`` canaries (a row) has its own population of ``users`` users with heavy-tailed call
volumes and their own rates, and a pre-period (every call served by the baseline) whose
per-user sums are the controller's covariates (CUPED). Users are exchangeable, so user ``i``'s
bucket is ``i / users``: at share ``x`` the candidate arm is the users ``i < x% * users``, and
*class* ``c`` (users ``bounds[c] <= i < bounds[c + 1]``) is in the candidate arm from step ``c`` on.

Arrays carry the metric first (``M`` metrics), then the row, then the user. Per row:

* the current step's per-user sums ``cur_y`` (M, r, u), ``cur_n``, ``cur_seen`` (r, u);
* the finished steps' per-user sums ``past_y`` (k, M, r, u), ``past_n``, ``past_seen`` (k, r, u);
* frozen per-class moments of the finished steps (``frozen``, M x r x classes x 4k x 4k) and sums
  (``sums``: units, Y, N, PY, PN; M x r x 5 x classes x k), so a check only touches the current step.

A user's *node values* at step ``s`` are the four columns ``Y_s``, ``N_s`` (canary events and
calls) and ``PY_s``, ``PN_s`` (the user's pre-period events and calls where seen at step ``s``: the
covariate cell's values); column ``i * k + s`` holds kind ``i`` (0: Y, 1: N, 2: PY, 3: PN).
`StickyUsers.evidence` builds every cell, covariate cell and cross sum from these moments, for
the rows at one step at a time (only the steps reached), all metrics at once (the statistics
run on ``(M, rows)`` arrays), and hands them to `evals.strata.stratified_difference`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from controller_scenarios import BASE, METRIC_NAMES, TRAFFIC, Scenario

from evals.online.strata import Cell, Cross, Evidence, pre_period, stratified_difference

M = len(METRIC_NAMES)
ROW_ARRAYS = ("lam", "cum", "xn", "cur_n", "cur_seen")
"""Arrays with the row first (compacted as canaries end)."""
METRIC_ARRAYS = ("mult", "xy", "cur_y", "frozen", "sums", "past_n", "past_seen")
"""Arrays with the row second (the metric, or the step, first)."""


class StickyUsers:
    """The users of ``runs`` canaries, and the sums the controller's log query would return."""

    def __init__(self, s: Scenario, shares: list[float], runs: int, rng: np.random.Generator) -> None:
        self.s, self.rng, self.k = s, rng, len(shares)
        u, r, k = s.users, runs, self.k
        if s.volume == "pareto":
            vol = rng.pareto(s.volume_param, size=(r, u)) + 1.0
        else:
            vol = rng.lognormal(0.0, s.volume_param, size=(r, u))
        self.lam = TRAFFIC * vol / vol.sum(axis=1, keepdims=True)
        self.cum = np.cumsum(vol, axis=1) / vol.sum(axis=1, keepdims=True)
        self.cum[:, -1] = 1.0  # each row's volumes as a distribution over its users
        self.mult = np.stack(
            [
                np.minimum(rng.gamma(s.heterogeneity, 1 / s.heterogeneity, size=(r, u)), 0.5 / BASE[m])
                for m in METRIC_NAMES
            ]
        )
        # the pre-period: every call served by the baseline, at the scenario's starting rates
        self.xn = rng.poisson(self.lam * s.pre_hours).astype(float)
        start = s.rates(0.0)
        p0 = np.array([start[m][0] for m in METRIC_NAMES])[:, None, None]
        self.xy = rng.binomial(self.xn.astype(np.int64), np.minimum(p0 * self.mult, 1.0)).astype(float)
        self.cut = np.array([round(x / 100 * u) for x in shares])
        self.bounds = [0, *self.cut.tolist(), u]
        self.cur_y = np.zeros((M, r, u))
        self.cur_n = np.zeros((r, u))
        self.cur_seen = np.zeros((r, u), dtype=bool)
        self.past_y = np.zeros((k, M, r, u))
        self.past_n = np.zeros((k, r, u))
        self.past_seen = np.zeros((k, r, u))
        self.frozen = np.zeros((M, r, k + 1, 4 * k, 4 * k))
        self.sums = np.zeros((M, r, 5, k + 1, k))

    def compact(self, keep: np.ndarray) -> None:
        for name in ROW_ARRAYS:
            setattr(self, name, getattr(self, name)[keep])
        for name in METRIC_ARRAYS:
            setattr(self, name, getattr(self, name)[:, keep])
        self.past_y = self.past_y[:, :, keep]

    # -- calls ------------------------------------------------------------------------------
    def hour(self, hour: float, step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One hour of calls: Poisson per user (2,000 per hour in all, by volume), drawn as a
        Poisson total per row and each call's user from the volumes (the same distribution);
        each call's events are Bernoulli at its user's rates.

        Returns per row the calls to each arm ``(r, 2)``, the users new to the step per arm
        ``(r, 2)``, and all calls ``(r,)``.
        """
        rng, u = self.rng, self.s.users
        r = len(step)
        totals = rng.poisson(TRAFFIC, r)
        flat = np.concatenate(
            [np.searchsorted(self.cum[j], rng.random(totals[j]), side="right") + j * u for j in range(r)]
        )
        row, user = np.divmod(flat, u)
        cand = user < self.cut[step][row]
        rates = self.s.rates(hour)
        pb = np.array([rates[m][0] for m in METRIC_NAMES])[:, None]
        pc = np.array([rates[m][1] for m in METRIC_NAMES])[:, None]
        events = rng.random((M, len(flat))) < np.where(cand, pc, pb) * self.mult[:, row, user]
        size = r * u
        calls = np.bincount(flat, minlength=size).reshape(r, u)
        for i in range(M):
            self.cur_y[i] += np.bincount(flat, weights=events[i], minlength=size).reshape(r, u)
        self.cur_n += calls
        called = calls > 0
        new = called & ~self.cur_seen
        self.cur_seen |= called
        in_cand = np.arange(u)[None, :] < self.cut[step][:, None]
        n_all = calls.sum(axis=1)
        n_c = (calls * in_cand).sum(axis=1)
        arm_calls = np.stack([n_all - n_c, n_c], axis=1).astype(np.int64)
        units = np.stack([(new & ~in_cand).sum(axis=1), (new & in_cand).sum(axis=1)], axis=1).astype(np.int64)
        return arm_calls, units, n_all.astype(float)

    # -- steps ------------------------------------------------------------------------------
    def _z(self, rows: np.ndarray, steps: int) -> np.ndarray:
        """Node values of the finished steps ``< steps``: (M, rows, u, 4 steps), kind-major."""
        seen = np.moveaxis(self.past_seen[:steps, rows], 0, -1)
        n = np.broadcast_to(np.moveaxis(self.past_n[:steps, rows], 0, -1), (M, *seen.shape))
        pn = np.broadcast_to(self.xn[rows][:, :, None] * seen, (M, *seen.shape))
        py = self.xy[:, rows][..., None] * seen
        return np.concatenate([np.moveaxis(self.past_y[:steps, :, rows], 0, -1), n, py, pn], axis=3)

    def freeze(self, rows: np.ndarray, step: np.ndarray) -> None:
        """Rows that advance: their current step's sums become a finished step, its moments frozen."""
        k = self.k
        for j, s in zip(rows.tolist(), step.tolist(), strict=True):
            self.past_y[s, :, j] = self.cur_y[:, j]
            self.past_n[s, j] = self.cur_n[j]
            self.past_seen[s, j] = self.cur_seen[j]
            seen = self.cur_seen[j]
            now = (seen, self.cur_y[:, j], self.cur_n[j], self.xy[:, j] * seen, self.xn[j] * seen)
            for c in range(k + 1):
                lo, hi = self.bounds[c], self.bounds[c + 1]
                for i, values in enumerate(now):
                    self.sums[:, j, i, c, s] = np.broadcast_to(values, (M, len(seen)))[:, lo:hi].sum(axis=1)
        z = self._z(rows, k)  # every column (zeros past the finished steps)
        for c in range(k + 1):
            lo, hi = self.bounds[c], self.bounds[c + 1]
            zc = z[:, :, lo:hi]
            self.frozen[:, rows, c] = np.matmul(zc.transpose(0, 1, 3, 2), zc)
        self.cur_y[:, rows] = 0
        self.cur_n[rows] = 0
        self.cur_seen[rows] = False

    def effective_units(self, step: np.ndarray) -> np.ndarray:
        """Per row, the smaller arm's effective units (`Cell.effective_units` summed over the steps
        where both arms were served), the controller's ``min_units`` guard."""
        k, rows = self.k, np.arange(len(step))
        n = self.sums[0, :, 2].copy()  # (r, classes, steps)
        diag = k + np.arange(k)
        nn = self.frozen[0][:, :, diag, diag].copy()
        for c in range(k + 1):
            lo, hi = self.bounds[c], self.bounds[c + 1]
            n[rows, c, step] += self.cur_n[:, lo:hi].sum(axis=1)
            nn[rows, c, step] = (self.cur_n[:, lo:hi] ** 2).sum(axis=1)
        eff = np.zeros((len(rows), 2))
        for st in range(k):
            arms = []
            for cand in (False, True):
                cls = [c for c in range(k + 1) if (c <= st) == cand]
                arms.append((n[:, cls, st].sum(axis=1), nn[:, cls, st].sum(axis=1)))
            both = (arms[0][0] > 0) & (arms[1][0] > 0)
            for a, (nx, nnx) in enumerate(arms):
                eff[:, a] += np.where(both, nx * nx / np.where(nnx > 0, nnx, 1.0), 0.0)
        out: np.ndarray = eff.min(axis=1)
        return out

    # -- evidence ---------------------------------------------------------------------------
    def evidence(self, rows: np.ndarray, step: np.ndarray) -> dict[str, Evidence]:
        """Per metric, the evidence of the rows ``rows`` (``step``: each row's current step)."""
        out: dict[str, dict[str, np.ndarray]] = {m: {} for m in METRIC_NAMES}
        for s in np.unique(step):
            at = rows[step == s]
            ev = self._evidence_at(at, int(s))
            for i, m in enumerate(METRIC_NAMES):
                for f in FIELDS:
                    full = out[m].setdefault(f, np.zeros(len(rows)))
                    full[step == s] = np.asarray(getattr(ev, f))[i]
        return {m: Evidence(**vals) for m, vals in out.items()}

    def _groups(self, s: int) -> list[tuple[int, int, list[int]]]:
        """User groups for rows at step ``s``: each class ``c <= s`` alone, the later classes (in the
        baseline at every step reached) together: ``(lo, hi, classes)``."""
        groups = [(self.bounds[c], self.bounds[c + 1], [c]) for c in range(s + 1)]
        groups.append((self.bounds[s + 1], self.s.users, list(range(s + 1, self.k + 1))))
        return groups

    def _moments(self, rows: np.ndarray, s: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per user group, the moments over the node values of steps ``0..s`` (M, rows, 4(s+1), 4(s+1))
        and the per-step sums (M, rows, 5, s+1), the current step's added to the frozen ones."""
        k, w = self.k, s + 1
        every = len(rows) == len(self.cur_n)  # views, not copies, when every row is asked for

        def pick(a: np.ndarray, axis: int = 0) -> np.ndarray:
            return a if every else np.take(a, rows, axis=axis)

        y_all, n_all, x_all, xn_all = pick(self.cur_y, 1), pick(self.cur_n), pick(self.xy, 1), pick(self.xn)
        seen_all = pick(self.cur_seen).astype(float)
        past = [(pick(self.past_y[t], 1), pick(self.past_n[t]), pick(self.past_seen[t])) for t in range(s)]
        frozen_cols = np.array([i * k + t for i in range(4) for t in range(w)])
        frozen = pick(self.frozen, 1)[..., frozen_cols[:, None], frozen_cols[None, :]]
        sums = pick(self.sums, 1)[..., :w]
        moments, totals = [], []
        for lo, hi, classes in self._groups(s):
            g = slice(lo, hi)
            x, xn, seen = x_all[..., g], xn_all[:, g], seen_all[:, g]
            cur = [y_all[..., g], n_all[:, g], x * seen, xn * seen]  # Y, N, PY, PN at the current step
            mm = frozen[:, :, classes].sum(axis=2)
            for a in range(4):
                for b in range(a, 4):
                    mm[..., a * w + s, b * w + s] = mm[..., b * w + s, a * w + s] = _dot(cur[a], cur[b])
            for t, (py_t, pn_t, ps_t) in enumerate(past):
                old = [py_t[..., g], pn_t[:, g], x * ps_t[:, g], xn * ps_t[:, g]]
                for a in range(4):
                    for b in range(4):
                        mm[..., a * w + s, b * w + t] = mm[..., b * w + t, a * w + s] = _dot(cur[a], old[b])
            moments.append(mm)
            total = sums[:, :, :, classes].sum(axis=3)
            total[:, :, 0, s] += seen.sum(axis=1)
            for i, values in enumerate(cur):
                total[:, :, 1 + i, s] += values.sum(axis=-1)
            totals.append(total)
        return moments, totals

    def _evidence_at(self, rows: np.ndarray, s: int) -> Evidence:
        """The evidence of rows all at step ``s``, on (M, rows) arrays: only steps ``0..s`` have calls."""
        w = s + 1
        moments, totals = self._moments(rows, s)
        kinds = ("main", "pre") if self.s.pre_hours > 0 else ("main",)

        def node(t: int, kind: str) -> tuple[str, int, int]:
            off = 2 * w if kind == "pre" else 0
            return (pre_period(str(t)) if kind == "pre" else str(t), off + t, off + w + t)

        cells, covariates, cross = [], [], {}
        for t in range(w):
            for a in ("baseline", "candidate"):
                gs = _in_arms(s, ((t, a),))
                mm = sum(moments[g] for g in gs)
                for kind in kinds:
                    name, iy, i_n = node(t, kind)
                    j = 1 if kind == "main" else 3  # where this kind's Y and N sums are
                    cell = Cell(
                        name,
                        a,
                        sum(totals[g][:, :, 0, t] for g in gs),
                        sum(totals[g][:, :, j, t] for g in gs),
                        sum(totals[g][:, :, j + 1, t] for g in gs),
                        mm[..., iy, iy],
                        mm[..., i_n, i_n],
                        mm[..., iy, i_n],
                    )
                    (cells if kind == "main" else covariates).append(cell)
        nodes = [(t, a, kind) for t in range(w) for a in ("baseline", "candidate") for kind in kinds]
        for i, (t, a, ka) in enumerate(nodes):
            for t2, b, kb in nodes[i + 1 :]:
                gs = _in_arms(s, ((t, a), (t2, b)))
                if not gs:
                    continue
                mm = sum(moments[g] for g in gs)
                na, ya, na_ = node(t, ka)
                nb, yb, nb_ = node(t2, kb)
                cross[((na, a), (nb, b))] = Cross(
                    mm[..., ya, yb], mm[..., ya, nb_], mm[..., na_, yb], mm[..., na_, nb_]
                )
        return stratified_difference(cells, cross, rate=True, covariates=covariates)


FIELDS = tuple(f for f in Evidence.__dataclass_fields__ if f != "period_weights")


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_users a * b`` as (M, rows): ``a`` and ``b`` are (M, rows, users) or (rows, users)."""
    if a.ndim == 2 and b.ndim == 2:
        return np.broadcast_to(np.einsum("rg,rg->r", a, b), (M, a.shape[0]))
    sub = {3: "mrg", 2: "rg"}
    out: np.ndarray = np.einsum(f"{sub[a.ndim]},{sub[b.ndim]}->mr", a, b)
    return out


@functools.cache
def _in_arms(s: int, pairs: tuple[tuple[int, str], ...]) -> list[int]:
    """The user groups of `StickyUsers._groups` (for rows at step ``s``) in arm ``a`` at each step ``t``
    of ``pairs``: group ``g <= s`` is class ``g`` (a candidate from step ``g`` on), group ``s + 1`` the
    later classes (baseline at every step ``<= s``)."""
    return [g for g in range(s + 2) if all((g <= t) == (a == "candidate") for t, a in pairs)]


def spread(evidence: dict[str, Evidence], sub: np.ndarray, size: int) -> dict[str, Evidence]:
    """Evidence for the rows ``sub`` as full-size arrays; other rows have no observations (no decision)."""
    out = {}
    for m, ev in evidence.items():
        vals: dict[str, Any] = {}
        for f in FIELDS:
            full = np.zeros(size)
            full[sub] = np.asarray(getattr(ev, f), dtype=float)
            vals[f] = full
        out[m] = Evidence(**vals)
    return out
