"""Packing batches into jobs: small batches share a job, full, delayed or unsized ones do not."""

from __future__ import annotations

from datetime import timedelta

from clarion.queue import BatchJob, pack_jobs


def test_small_batches_share_jobs_up_to_the_recipient_budget() -> None:
    jobs = [BatchJob(i, recipients=3) for i in range(1, 8)]

    assert pack_jobs(jobs, budget=10) == [([1, 2, 3], None), ([4, 5, 6], None), ([7], None)]


def test_full_delayed_and_unsized_batches_ride_alone() -> None:
    later = timedelta(seconds=30)
    jobs = [
        BatchJob(1, recipients=1),
        BatchJob(2, recipients=10),  # full
        BatchJob(3, recipients=1, delay=later),  # a retry
        BatchJob(4),  # re-enqueued by the sweep: size unknown
        BatchJob(5, recipients=1),
    ]

    assert pack_jobs(jobs, budget=10) == [
        ([2], None),
        ([3], later),
        ([4], None),
        ([1, 5], None),
    ]
