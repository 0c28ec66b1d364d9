"""An entropyctl plugin: α decays linearly from alpha_start to alpha_end over decay_steps steps."""

from typing import Any, Literal

from pydantic import Field

from entropyctl import EntropyController, EntropyReading, GroupOutcome, Plan, is_usable_reading
from entropyctl.config import ControllerConfig


class LinearDecayConfig(ControllerConfig):
    name: Literal["linear_decay"] = "linear_decay"
    alpha_start: float = Field(0.01, ge=0)
    alpha_end: float = Field(0.0, ge=0)
    decay_steps: int = Field(100, ge=1)


class LinearDecayController(EntropyController):
    """Entropy coefficient decaying linearly over training (a schedule, no feedback)."""

    config_class = LinearDecayConfig

    def __init__(self, config: LinearDecayConfig) -> None:
        super().__init__(config)
        self.steps, self.ignored, self.last = 0, 0, None

    def alpha(self) -> float:  # α_t = α_start + min(t / T, 1)·(α_end − α_start)
        c, progress = self.config, min(self.steps / self.config.decay_steps, 1.0)
        return c.alpha_start + progress * (c.alpha_end - c.alpha_start)

    def plan(self, outcome: GroupOutcome) -> Plan:
        return self.uniform_plan(outcome, self.alpha(), clip_low=0.2, clip_high=0.2)

    def observe(self, reading: EntropyReading) -> None:
        if not is_usable_reading(reading):  # the robustness contract: ignore and count
            self.ignored += 1
            return
        self.steps, self.last = self.steps + 1, float(reading.mean_entropy)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "ignored": self.ignored, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.ignored, self.last = state["steps"], state["ignored"], state["last"]

    def metrics(self) -> dict[str, float]:
        last = float("nan") if self.last is None else self.last
        return {
            "alpha": self.alpha(),
            "target_entropy": float("nan"),
            "h0": float("nan"),
            "last_entropy": last,
            "readings_ignored": float(self.ignored),
        }
