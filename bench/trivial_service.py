"""The floor of the framework: a BentoML endpoint that returns a constant, served the same
way as the scoring service (for latency comparisons in bench_scoring)."""

from __future__ import annotations

from typing import Any

import bentoml


@bentoml.service(name="trivial")
class Trivial:
    @bentoml.api(route="/score")
    def score(self, leads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"lead_id": "x", "score": 1.0}]
