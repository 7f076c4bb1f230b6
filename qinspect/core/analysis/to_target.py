"""Mixed precision to a target: the cheapest plan found that meets an output SQNR or an accuracy
drop on the data, with all-cheapest and all-dearest beside it for scale.

1. All groups at the cheapest candidate, and all at the dearest, are measured. If the cheapest
   meets the target it is the answer; if the dearest misses, nothing can, and the groups that
   hold the remaining error are named (those whose keeping float32 gains the most).
2. Sensitivity at the all-cheapest plan gives each group the noise it makes alone (all else
   float) and the noise keeping it float removes; groups are ordered by their sum per unit of cost
   (bit operations) their move to the dearest candidate adds.
3. The fewest groups, in that order, that moved together meet the target: a binary search over
   how many (log2 of the group count full runs; sensitivity's runs are partial, see `engine`).
4. The dearest of the moved groups are tried back at the cheapest candidate, one at a time, and
   left there where the target still holds.
5. With few groups (`GREEDY_GROUPS`), the one-at-a-time Pareto search (`search.pareto_search`)
   runs as well, and the cheaper of the two answers is taken.

Moving groups together rather than one at a time matters where the error is spread over many
groups whose errors partly cancel: there single moves measure as noise and a one-at-a-time
search stalls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..plan import PrecisionPlan, derive_encodings, refusals
from ..progress import NullProgress, Progress, check_cancel
from .cost import cost_of_bits, op_macs, tensor_bits
from .engine import OutputEvaluator
from .search import ParetoPoint, _order, noise, pareto_search, plan_with
from .sensitivity import QuantGroup, _variant_only_float, is_quantizing, promote_changes, quantizer_groups, sensitivity


@dataclass
class Reference:
    label: str             # "all int8", say
    sqnr: float
    accuracy: float | None
    cost: float            # bit operations over the all-cheapest plan's


@dataclass
class TargetResult:
    met: bool
    goal: str                          # "output SQNR >= 40.0 dB", say
    point: ParetoPoint | None          # the chosen plan (all-dearest when not met)
    cheapest: Reference
    dearest: Reference
    float_accuracy: float | None
    samples: int
    limits: list[tuple[str, list[str], float]] = field(default_factory=list)  # (group, tensors, dB gained float)

    def promoted(self) -> dict[str, str]:
        """Group -> precision for the groups the chosen plan moves off the cheapest candidate."""
        if self.point is None:
            return {}
        first = self.cheapest.label.split()[-1]
        return {g: p for g, p in self.point.precisions.items() if p != first}


def goal_text(target_sqnr: float | None, max_accuracy_drop: float | None) -> str:
    parts = []
    if target_sqnr is not None:
        parts.append(f"output SQNR >= {target_sqnr:g} dB")
    if max_accuracy_drop is not None:
        parts.append(f"top-1 within {max_accuracy_drop:g} points of float")
    return " and ".join(parts)


class _Trials:
    """Plans with some groups at the dearest candidate and the rest at the cheapest, measured."""

    def __init__(self, index, stats, plan, groups, cands, ev, progress):
        self.index, self.stats, self.plan, self.groups, self.cands = index, stats, plan, groups, cands
        self.ev, self.progress, self.macs = ev, progress, op_macs(index)
        self.unit = None

    def changes(self, dear: set[str]) -> dict:
        out = promote_changes([g for g in self.groups if g.name not in dear], self.cands[0])
        out.update(promote_changes([g for g in self.groups if g.name in dear], self.cands[-1]))
        return out

    def cost(self, encodings):
        c = cost_of_bits(self.index, tensor_bits(self.index, encodings), self.macs)
        if self.unit is None:
            self.unit = (c.bit_ops, "bit_ops") if c.bit_ops > 0 else (c.param_bytes or 1.0, "param_bytes")
        return c, getattr(c, self.unit[1]) / self.unit[0]

    def measure(self, dear: set[str], label: str) -> ParetoPoint:
        check_cancel(self.progress)
        changes = self.changes(dear)
        enc = derive_encodings(self.index, self.stats, plan_with(self.plan, changes))
        sqnr, acc = self.ev.evaluate(enc, progress=self.progress)
        c, relative = self.cost(enc)
        precisions = {g.name: self.cands[-1] if g.name in dear else self.cands[0] for g in self.groups}
        return ParetoPoint(relative, c.param_bytes, sqnr, acc, changes, label, c.bit_ops, precisions)


def search_to_target(index, stats, plan: PrecisionPlan, data, *, target_sqnr: float | None = None,
                     max_accuracy_drop: float | None = None, candidates=("int8", "int16"), samples: int | None = 32,
                     batch_size: int = 8, providers=None, progress: Progress | None = None) -> TargetResult:
    """The cheapest plan found that meets the target (see the module doc). `max_accuracy_drop` is in
    percentage points of top-1 and needs labels in the data. Raises ValueError for a target that
    cannot be measured."""
    if target_sqnr is None and max_accuracy_drop is None:
        raise ValueError("give an output SQNR target or a largest accuracy drop")
    progress = progress or NullProgress()
    cands = _order(candidates)
    goal = goal_text(target_sqnr, max_accuracy_drop)
    ev = OutputEvaluator(index, data, samples, batch_size=batch_size, providers=providers, progress=progress)
    try:
        if max_accuracy_drop is not None and ev.float_accuracy is None:
            raise ValueError("an accuracy target needs labels in the data (a 'labels' array beside the inputs)")
        floor = None if max_accuracy_drop is None else ev.float_accuracy - max_accuracy_drop / 100.0

        def meets(point: ParetoPoint) -> bool:
            if target_sqnr is not None and not point.output_sqnr >= target_sqnr:
                return False
            return floor is None or (point.accuracy is not None and point.accuracy >= floor - 1e-12)

        groups = quantizer_groups(index)
        for c in cands:  # a candidate the target cannot run is refused before any search
            problems = refusals(index, plan_with(plan, promote_changes(groups, c)))
            if problems:
                raise ValueError(f"candidate {c}: {problems[0]}")
        trials = _Trials(index, stats, plan, groups, cands, ev, progress)
        low = trials.measure(set(), f"all {cands[0]}")
        high = trials.measure({g.name for g in groups}, f"all {cands[-1]}")
        cheapest = Reference(low.label, low.output_sqnr, low.accuracy, low.cost)
        dearest = Reference(high.label, high.output_sqnr, high.accuracy, high.cost)

        def result(met, point, limits=()):
            return TargetResult(met, goal, point, cheapest, dearest, ev.float_accuracy, ev.samples, list(limits))

        if meets(low):
            return result(True, low)
        if not meets(high):
            return result(False, high, _limits(index, stats, plan, high, groups, ev, progress))
        order, added = _priority(index, stats, plan, groups, cands, ev, trials, low, progress)
        lo, hi, found = 1, len(order), high
        while lo < hi:  # the fewest groups in `order` that meet the target
            mid = (lo + hi) // 2
            point = trials.measure(set(order[:mid]), f"{mid} groups at {cands[-1]}")
            if meets(point):
                found, hi = point, mid
            else:
                lo = mid + 1
        if lo == len(order) and found is high:
            found = trials.measure(set(order), f"{lo} groups at {cands[-1]}")
            found = found if meets(found) else high
        found = _prune(trials, found, added, meets)
        if len(groups) <= GREEDY_GROUPS:  # few groups: the one-at-a-time search is affordable too
            greedy = [q for q in pareto_search(index, stats, plan, None, candidates=cands, progress=progress,
                                               evaluator=ev) if meets(q)]
            found = min(greedy + [found], key=lambda q: q.cost)
        return result(True, found)
    finally:
        ev.close()


def _priority(index, stats, plan, groups, cands, ev, trials, low, progress):
    """Group names, most noise removed per cost added first (see the module doc), and the cost
    each adds."""
    start = derive_encodings(index, stats, plan_with(plan, trials.changes(set())))
    entries = sensitivity(index, start, None, evaluator=ev, progress=progress)
    base = noise(low.output_sqnr)
    base_cost = low.cost
    scored, costs = [], {}
    for e in entries:
        if not e.quantized:
            continue
        # the noise this group makes alone (all else float): free of the interactions that make
        # "kept float" gains small when several groups fail together (a detector's concats)
        gain = noise(e.only_quantized_sqnr) + max(base - noise(e.only_float_sqnr), 0.0)
        enc = derive_encodings(index, stats, plan_with(plan, trials.changes({e.group.name})))
        added = max(trials.cost(enc)[1] - base_cost, 1e-12)
        scored.append((gain / added, e.score, e.group.name))
        costs[e.group.name] = added
    scored.sort(key=lambda item: (-item[0], -item[1]))
    return [name for _, _, name in scored], costs


PRUNE = 24  # the dearest moved groups the last pass tries to move back
GREEDY_GROUPS = 40  # up to this many groups, `search.pareto_search`'s plans are candidates too


def _prune(trials, point: ParetoPoint, added: dict[str, float], meets) -> ParetoPoint:
    """Move the dearest moved groups back to the cheapest candidate, one at a time, where the
    target still holds: the prefix of a ranking can carry groups it did not need. Each try runs
    only the graph downstream of its group (`OutputEvaluator.set_reference`)."""
    cheap, dear_c = trials.cands[0], trials.cands[-1]
    dear = {g for g, c in point.precisions.items() if c == dear_c}
    ev = trials.ev
    ev.set_reference("chosen", derive_encodings(trials.index, trials.stats, plan_with(trials.plan, point.changes)))
    for g in sorted(dear, key=lambda n: -added.get(n, 0.0))[:PRUNE]:
        check_cancel(trials.progress)
        changes = trials.changes(dear - {g})
        enc = derive_encodings(trials.index, trials.stats, plan_with(trials.plan, changes))
        sqnr, acc = ev.evaluate(enc, progress=trials.progress, reference="chosen")
        c, relative = trials.cost(enc)
        trial = ParetoPoint(relative, c.param_bytes, sqnr, acc, changes, f"{len(dear) - 1} groups at {dear_c}",
                            c.bit_ops, {n: dear_c if n in dear - {g} else cheap for n in point.precisions})
        if meets(trial):
            dear.discard(g)
            point = trial
            ev.set_reference("chosen", enc)
    return point


def _limits(index, stats, plan, point: ParetoPoint, groups: list[QuantGroup], ev, progress, top: int = 5):
    """The groups whose keeping float32 gains the most output SQNR at `point`'s plan."""
    enc = derive_encodings(index, stats, plan_with(plan, point.changes))
    base, _ = ev.set_reference("limits", enc, progress=progress)
    gains = []
    for g in groups:
        if not any(is_quantizing(index, t, enc.get(t)) for t in g.tensors):
            continue
        check_cancel(progress)
        variant, passthrough = _variant_only_float(index, enc, g)
        sqnr, _ = ev.evaluate(variant, passthrough, progress=progress, reference="limits")
        gains.append((g.name, list(g.tensors), sqnr - base if math.isfinite(sqnr) and math.isfinite(base) else math.inf))
    gains.sort(key=lambda item: -item[2])
    return gains[:top]
