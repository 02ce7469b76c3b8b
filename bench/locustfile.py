"""Locust users for `bench/load_test.py`: a CRM that mostly sends one changed lead and now
and then a batch of 100, with an API key, as of a fixed moment."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import HttpUser, between, task

BODIES = json.loads(Path(os.environ["LEADSCORE_LOAD_BODIES"]).read_text())
HEADERS = {"Authorization": f"Bearer {os.environ['LEADSCORE_LOAD_KEY']}"}
AS_OF = os.environ["LEADSCORE_LOAD_AS_OF"]
BATCH_WEIGHT = int(os.environ.get("LEADSCORE_LOAD_BATCH_WEIGHT", "1"))  # of 10 requests


class Crm(HttpUser):
    wait_time = between(0.25, 0.75)  # a busy CRM: each of the 50 clients calls about twice a second

    @task(10 - BATCH_WEIGHT)
    def one_lead(self) -> None:
        body = {"leads": [random.choice(BODIES)], "as_of": AS_OF}
        self.client.post("/score", json=body, headers=HEADERS, name="/score 1 lead")

    @task(BATCH_WEIGHT)
    def hundred_leads(self) -> None:
        start = random.randrange(0, len(BODIES) - 100)
        body = {"leads": BODIES[start : start + 100], "as_of": AS_OF}
        self.client.post("/score", json=body, headers=HEADERS, name="/score 100 leads")
