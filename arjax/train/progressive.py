"""Progressive scale training (VAR's `--pg`): early steps train only the first scales.

During the first `fraction` of training the model sees a growing prefix of the scale schedule,
from `first_scale` (an index into patch_nums) up to all K scales, after which training is normal.
The newest scale's loss weight ramps from 0.01 to 1 over `ramp_steps` (not on the first stage).
The stage is a pure function of the step, so a resumed run trains exactly what it would have.
Each stage has its own sequence length, hence its own compiled step (at most K compilations).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ProgressiveSchedule:
    num_scales: int
    total_steps: int
    warmup_steps: int
    fraction: float = 0.0  # 0 = off
    first_scale: int = 4
    ramp_steps: int = 0

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"progressive.fraction must be in [0, 1]; got {self.fraction}")
        if self.fraction and not 0 <= self.first_scale < self.num_scales:
            raise ValueError(f"progressive.first_scale must be in [0, {self.num_scales - 1}] for "
                             f"{self.num_scales} scales; got {self.first_scale}")

    def stage(self, step: int) -> int:
        """Index of the last scale trained at `step` (num_scales - 1 = all of them)."""
        last = self.num_scales - 1
        if not self.fraction:
            return last
        end = self.total_steps * self.fraction
        if step <= self.warmup_steps:
            return self.first_scale
        if step >= end:
            return last
        progress = min(max((step - self.warmup_steps) / max(end - self.warmup_steps, 1e-9), 0.0), 1.0)
        return self.first_scale + round(progress * (last - self.first_scale))

    def stage_start(self, stage: int) -> int:
        """First step of `stage` (stages never decrease with the step)."""
        lo, hi = 0, self.total_steps
        while lo < hi:  # binary search for the first step whose stage is >= `stage`
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if self.stage(mid) < stage else (lo, mid)
        return lo

    def newest_scale_weight(self, stage: int, step):
        """Loss weight of the stage's newest scale at `step` (works on traced steps)."""
        if not self.fraction or stage == self.stage(0) or stage == self.num_scales - 1:
            return 1.0
        done = (step - self.stage_start(stage) + 1) / max(self.ramp_steps, 1)
        return min(max(done, 0.01), 1.0) if isinstance(done, (int, float)) else done.clip(0.01, 1.0)
