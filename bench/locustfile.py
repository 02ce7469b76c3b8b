"""Locust users for `bench/load_test.py`: a CRM that mostly sends one changed lead and now
and then a batch of 100, with an API key, as of a fixed moment.

Bodies are encoded once at start and sent with locust's geventhttpclient user: the load
generator shares this machine's two cores with the service, so its own cost per request
(JSON-encoding a 170 KB batch, python-requests) must stay small or it measures itself."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, between, task

LEADS = json.loads(Path(os.environ["LEADSCORE_LOAD_BODIES"]).read_text())
AS_OF = os.environ["LEADSCORE_LOAD_AS_OF"]
BATCH_WEIGHT = int(os.environ.get("LEADSCORE_LOAD_BATCH_WEIGHT", "1"))  # of 10 requests
HEADERS = {"Authorization": f"Bearer {os.environ['LEADSCORE_LOAD_KEY']}", "Content-Type": "application/json"}
SINGLES = [json.dumps({"leads": [lead], "as_of": AS_OF}).encode() for lead in LEADS]
BATCHES = [json.dumps({"leads": LEADS[i : i + 100], "as_of": AS_OF}).encode() for i in range(0, len(LEADS) - 99, 100)]


class Crm(FastHttpUser):
    wait_time = between(0.25, 0.75)  # a busy CRM: each of the 50 clients calls about twice a second

    @task(10 - BATCH_WEIGHT)
    def one_lead(self) -> None:
        self.client.post("/score", data=random.choice(SINGLES), headers=HEADERS, name="/score 1 lead")

    @task(BATCH_WEIGHT)
    def hundred_leads(self) -> None:
        self.client.post("/score", data=random.choice(BATCHES), headers=HEADERS, name="/score 100 leads")
