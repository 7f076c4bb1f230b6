"""Mixed precision: the Pareto front of output error against cost, by a greedy search guided by sensitivity.

The search works on quantizer groups (`sensitivity.quantizer_groups`) and candidate precisions
(by default int8, int16, float16; sorted by bits, integer before float at the same bits):

1. Start from the cheapest plan: the given plan with every group at the cheapest candidate. Its
   cost is 1.0: `ParetoPoint.cost` is bit operations (`cost.plan_cost`) divided by the starting
   plan's (parameter bytes when the model has no MACs).
2. Measure sensitivity there (`sensitivity.sensitivity`): the relative output noise removed by
   keeping each group float bounds what promoting it to any candidate can remove.
3. Greedy with lazy evaluation: every (group, higher precision) option has a priority, noise
   removed per cost added, first the sensitivity bound, then the measured value. The best option
   is simulated at the current plan; if it stays best it is applied, else it goes back into the
   queue with its measured priority. A group moves up the ladder or sideways to a candidate of
   the same bits (int16 <-> float16); such equal-cost moves go first when they reduce the
   noise. Every applied move reduces the measured noise, so the search cannot cycle; it stops
   when no option reduces the noise or after `max_steps` moves.
4. Every applied step is a point; the points that no other point beats on both cost and error
   are returned, cost up and output SQNR up.

Each point's `changes` are plan changes relative to the given plan (only tensors whose edit and
encoding change), ready for `commands.SetEdits`.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace

from .cost import cost_of_bits, op_macs, tensor_bits
from ..plan import PrecisionPlan, derive_encodings
from ..progress import NullProgress, Progress, check_cancel
from .sensitivity import PRECISIONS, OutputEvaluator, promote_changes, quantizer_groups, sensitivity


@dataclass
class ParetoPoint:
    cost: float            # bit operations / those of the starting plan (every group at the cheapest candidate)
    param_bytes: float
    output_sqnr: float     # dB, on the search's samples
    accuracy: float | None # top-1 when the data has labels
    changes: dict[str, dict]   # changes_by_name relative to the plan given to the search, for SetEdits
    label: str
    bit_ops: float = 0.0
    precisions: dict[str, str] = field(default_factory=dict)  # group name -> candidate precision

    def to_dict(self) -> dict:
        return {"cost": self.cost, "param_bytes": self.param_bytes, "bit_ops": self.bit_ops,
                "output_sqnr": self.output_sqnr if math.isfinite(self.output_sqnr) else None,
                "accuracy": self.accuracy, "label": self.label, "precisions": dict(self.precisions)}


def noise(sqnr_db: float) -> float:
    """Relative noise power of an SQNR in dB."""
    return 10.0 ** (-sqnr_db / 10.0) if sqnr_db < 1000 else 0.0


def plan_with(plan: PrecisionPlan, changes: dict[str, dict]) -> PrecisionPlan:
    """A copy of `plan` with `changes` applied (the original is not touched)."""
    out = PrecisionPlan(plan.defaults, plan.target)  # the same target: its rules shape every encoding
    out.edits = dict(plan.edits)
    for name, ch in changes.items():
        out.set(name, **ch)
    return out


def effective_changes(index, stats, plan: PrecisionPlan, changes: dict[str, dict],
                      known: dict | None = None) -> dict[str, dict]:
    """The part of `changes` that matters: a tensor's change is left out when it leaves the plan's
    edit as it is, or when the encodings `plan` + `changes` derive give that tensor what `plan`
    already gives it (checked: the rest derives the same encodings as all of `changes`).
    `known`: the encodings of `plan`, if already derived."""
    base = derive_encodings(index, stats, plan) if known is None else known
    full = derive_encodings(index, stats, plan_with(plan, changes), list(changes), base)
    keep = {n: ch for n, ch in changes.items()
            if replace(plan.edit(n), **ch) != plan.edit(n) and full.get(n) != base.get(n)}
    got = derive_encodings(index, stats, plan_with(plan, keep), list(keep), base)
    keep.update({n: ch for n, ch in changes.items() if n not in keep and got.get(n) != full.get(n)})
    return keep


def _order(candidates) -> list[str]:
    unknown = [c for c in candidates if c not in PRECISIONS]
    if unknown or not candidates:
        raise ValueError(f"candidate precisions must be among {tuple(PRECISIONS)}, got {tuple(candidates)}")
    return sorted(dict.fromkeys(candidates), key=lambda c: (PRECISIONS[c][1], PRECISIONS[c][0] == "float"))


def _label(levels: dict[str, int], cands: list[str]) -> str:
    """"all int8", or e.g. "int8 + int16: conv1, fc2 + float16: fc1" (the cheapest candidate's groups unnamed)."""
    used = sorted(set(levels.values()))
    if len(used) == 1:
        return "all " + cands[used[0]]
    parts = []
    for j in used:
        names = [g for g, lv in levels.items() if lv == j]
        if j == 0:
            parts.append(cands[0])
        else:
            parts.append(f"{cands[j]}: " + ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else ""))
    return " + ".join(parts)


class _State:
    def __init__(self, plan, encodings, sqnr, accuracy, levels, cost):
        self.plan, self.encodings, self.sqnr, self.accuracy = plan, encodings, sqnr, accuracy
        self.levels, self.cost = levels, cost


def pareto_search(index, stats, plan: PrecisionPlan, data, *, candidates=("int8", "int16", "float16"),
                  samples: int | None = 16, max_steps: int | None = None, progress: Progress | None = None,
                  batch_size: int = 8, providers=None, evaluator: OutputEvaluator | None = None) -> list[ParetoPoint]:
    """The non-dominated plans found by the greedy search (see the module doc), cost up, error down.

    With `evaluator`, its cached samples are
    used (`data`, `samples` and `batch_size` are not) and it is left open. Each trial re-simulates
    only the graph downstream of the group it changes (`OutputEvaluator.set_reference`).
    Cancellation is checked between simulations (raises `Cancelled`)."""
    progress = progress or NullProgress()
    cands = _order(candidates)
    groups = quantizer_groups(index)
    by_name = {g.name: g for g in groups}
    macs = op_macs(index)
    bits = [PRECISIONS[c][1] for c in cands]
    limit = len(groups) * len(cands) if max_steps is None else max_steps

    def allowed(level, j):  # up the ladder, or sideways to a candidate of the same bits
        return j != level and bits[j] >= bits[level]

    total = 3 + 2 * len(groups) + 2 * limit
    done = [0]

    def tick(message):
        done[0] += 1
        progress.update(min(done[0], total - 1), total, message)

    def costs(encodings):
        return cost_of_bits(index, tensor_bits(index, encodings), macs)

    def state_after(state, g, j):
        changes = promote_changes([by_name[g]], cands[j])
        p = plan_with(state.plan, changes)
        enc = derive_encodings(index, stats, p, list(changes), state.encodings)
        return p, enc

    progress.update(0, total, "running the float model")
    own = evaluator is None
    ev = evaluator or OutputEvaluator(index, data, samples, batch_size=batch_size, providers=providers,
                                      progress=progress)
    try:
        start_plan = plan_with(plan, promote_changes(groups, cands[0]))
        start_enc = derive_encodings(index, stats, start_plan)
        check_cancel(progress)
        sqnr, acc = ev.set_reference("current", start_enc, progress=progress)
        tick("measuring the cheapest plan")
        c0 = costs(start_enc)
        unit = (lambda c: c.bit_ops / c0.bit_ops) if c0.bit_ops > 0 else (
            lambda c: c.param_bytes / c0.param_bytes if c0.param_bytes else 0.0)
        state = _State(start_plan, start_enc, sqnr, acc, {g.name: 0 for g in groups}, c0)
        path = [state]
        bound = {e.group.name: max(noise(sqnr) - noise(e.only_float_sqnr), 0.0)
                 for e in sensitivity(index, start_enc, None, evaluator=ev, progress=_Sub(progress, tick))}

        heap: list = []
        seq = [0]

        def push(priority, g, j, version, measured=None):
            seq[0] += 1
            heapq.heappush(heap, (-priority, seq[0], g, j, version, measured))

        def ratio(gain, dcost):
            if dcost <= 1e-12:
                return math.inf if gain > 0 else -math.inf
            return gain / dcost

        for g in groups:
            for j in (j for j in range(len(cands)) if allowed(0, j)):
                _, enc = state_after(state, g.name, j)
                push(ratio(bound.get(g.name, 0.0), unit(costs(enc)) - unit(state.cost)), g.name, j, -1)
        version, steps = 0, 0
        while heap and steps < limit:
            neg, _, g, j, ver, measured = heapq.heappop(heap)
            priority = -neg
            if not allowed(state.levels[g], j):
                continue
            if ver == version:
                if priority <= 0:
                    # No measured option reduces the error. Options measured before the last step
                    # (their bounds may be stale, e.g. an equal-cost swap that did not help then)
                    # get one more measurement before the search gives up.
                    stale = [e for e in heap if e[4] != version and allowed(state.levels[e[2]], e[3])]
                    if not stale:
                        break
                    heap = [e for e in heap if e[4] == version]
                    heapq.heapify(heap)
                    push(priority, g, j, ver, measured)
                    for e in stale:
                        push(math.inf, e[2], e[3], -1)
                    continue
                p, enc, s, a, c = measured
                levels = {**state.levels, g: j}
                state = _State(p, enc, s, a, levels, c)
                path.append(state)
                version += 1
                steps += 1
                ev.set_reference("current", enc, progress=progress)
                for k in range(len(cands)):  # its other options cost differently now: measure them again
                    if allowed(j, k):
                        push(math.inf, g, k, -1)
                continue
            check_cancel(progress)
            p, enc = state_after(state, g, j)
            s, a = ev.evaluate(enc, progress=progress, reference="current")
            c = costs(enc)
            tick(f"trying {g} at {cands[j]}")
            push(ratio(noise(state.sqnr) - noise(s), unit(c) - unit(state.cost)), g, j, version, (p, enc, s, a, c))
    finally:
        if own:
            ev.close()
    progress.update(total, total, "done")
    return _front(index, stats, plan, path, cands, unit)


def _front(index, stats, plan, path, cands, unit) -> list[ParetoPoint]:
    points: list[ParetoPoint] = []
    known = derive_encodings(index, stats, plan)
    for st in sorted(path, key=lambda s: (unit(s.cost), -s.sqnr)):
        if points and st.sqnr <= points[-1].output_sqnr:
            continue  # dearer and not better: dominated
        changes: dict[str, dict] = {}
        for g in quantizer_groups(index):
            changes.update(promote_changes([g], cands[st.levels[g.name]]))
        point = ParetoPoint(unit(st.cost), st.cost.param_bytes, st.sqnr, st.accuracy,
                            effective_changes(index, stats, plan, changes, known), _label(st.levels, cands), st.cost.bit_ops,
                            {g: cands[lv] for g, lv in st.levels.items()})
        if points and math.isclose(point.cost, points[-1].cost, rel_tol=1e-12):
            points[-1] = point  # same cost, better error
        else:
            points.append(point)
    return points


class _Sub:
    """Progress for the sensitivity pass inside the search: its runs tick the search's bar."""

    def __init__(self, progress, tick):
        self.progress, self.tick, self.last = progress, tick, 0

    def update(self, done, total, message=""):
        for _ in range(max(done - self.last, 0)):
            self.tick(message)
        self.last = max(self.last, done)

    def cancelled(self):
        return self.progress.cancelled()
