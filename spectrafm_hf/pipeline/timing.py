"""Wall-clock timing of the pipeline's named steps (written to ``timings.json``)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Timer:
    """Wall seconds per named step, printed as they finish."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str):
        start = time.time()
        print(f"[pipeline] {name} ...", flush=True)
        outcome = "stopped"  # an error or Ctrl-C inside the step must not read as "done"
        try:
            yield
            outcome = "done"
        finally:
            self.seconds[name] = time.time() - start
            print(f"[pipeline] {name} {outcome} after {self.seconds[name]:.1f} s" if outcome != "done"
                  else f"[pipeline] {name} done in {self.seconds[name]:.1f} s", flush=True)
