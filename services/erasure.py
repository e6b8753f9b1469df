"""/admin/forget_user and /admin/erasures/<job>: the right to erasure, as a job.

``forget_user`` records the user in the erasure ledger (``shoprec.ledger``: from that moment
no ingest, feature build, training set or materialize brings them back) and answers 202
with the job's id at once; a thread of this worker then removes the user from every place
ShopRec writes (``shoprec.erasure.run_job``, one erasure at a time across the workers).
A job a crash interrupted is resumed when a worker starts (or by the next features run).
``erasure`` answers from the ledger, so any worker can tell how any job went.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

from services.guards import Limits, RequestError
from shoprec import ledger
from shoprec.config import Settings
from shoprec.erasure import request_erasure, resume_pending, run_job
from shoprec.features.online import OnlineFeatures

log = logging.getLogger(__name__)
JOB_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Accepted:
    job_id: str
    status: str

    def to_json(self) -> dict:
        return {"job_id": self.job_id, "status": self.status, "status_url": f"/admin/erasures/{self.job_id}"}


@dataclass(frozen=True)
class JobStatus:
    job: ledger.ErasureJob

    def to_json(self) -> dict:
        return self.job.to_json()


class Erasure:
    def __init__(self, settings: Settings, features: OnlineFeatures | None, limits: Limits):
        self.settings = settings
        self.features = features
        self.limits = limits
        threading.Thread(target=self._run, args=(None,), name="erasure-resume", daemon=True).start()

    def forget_user(self, user_id: str) -> Accepted:
        user_id = self.limits.check_id(user_id, "user_id")
        job = request_erasure(self.settings, user_id)
        threading.Thread(target=self._run, args=(job.job_id,), name=f"erasure-{job.job_id[:8]}", daemon=True).start()
        return Accepted(job.job_id, job.status)

    def status(self, job_id: str) -> JobStatus:
        job = ledger.job(self.settings, job_id) if JOB_ID.fullmatch(job_id or "") else None
        if job is None:
            raise RequestError(f"no erasure job {job_id[:40]!r}", status=404)
        return JobStatus(job)

    def _run(self, job_id: str | None) -> None:
        """One job (None: every unfinished one); a failure is in the ledger, and the next start or
        features run tries again."""
        try:
            if job_id is None:
                resume_pending(self.settings, self.features)
            else:
                run_job(self.settings, job_id, self.features)
        except Exception:  # noqa: BLE001 - a thread's failure is recorded in the ledger; log it too
            log.exception("erasure job %s failed", job_id or "(resume)")
