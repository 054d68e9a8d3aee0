"""The BOP price: fixed (--bops-weight), or adapted by dual ascent so the model meets a budget (--bops-budget).

The penalty is price x E[BOPs] / BOPs_fp32 (loss per 100% of the fp32 model's BOPs). Under a budget F the price
is a Lagrange multiplier: after every step in which the gates learned,
    price <- price + price_lr * (fraction / F - 1)
with `fraction` the deterministic BOPs of the model as it would export now: the price rises while the model is
over budget and falls once it is under. As a cap (budget_mode "cap") the price stops at 0: unused budget is
left unused. As a target ("target") it may fall below 0 and then pays gates to reopen, so the model uses its
budget instead of drifting below it. The path is kept for the summary and the audit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PATH_POINTS = 64  # at most this many (step, price, fraction) points are kept; the path is thinned evenly


@dataclass
class Price:
    value: float
    budget: float | None  # None: a fixed price
    rate: float
    floor: float | None = 0.0  # None: the price may turn negative (the budget as a target)
    path: list[list[float]] = field(default_factory=list)  # [step, price, fraction]

    def update(self, step: int, fraction: float) -> None:
        if self.budget is not None:
            self.value = self.value + self.rate * (fraction / self.budget - 1.0)
            if self.floor is not None:
                self.value = max(self.floor, self.value)
        self.path.append([step, self.value, fraction])
        if len(self.path) > 2 * PATH_POINTS:
            self.path = self.path[::2]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Price:
        return cls(float(d["value"]), d["budget"], float(d["rate"]), d["floor"], [list(p) for p in d["path"]])
