"""The answer journal's file (clarion.delivery.journal): what a take-over may trust in it.
The take-over itself, on a real worker and simulator, is in test_leases.py."""

from __future__ import annotations

import os
from pathlib import Path

from clarion.delivery.journal import AnswerJournal, journal_key
from clarion.delivery.providers.base import DeliveryResult, Outcome

SENT = DeliveryResult(Outcome.DELIVERED, status=200)
GONE = DeliveryResult(Outcome.TOKEN_INVALID, reason="Unregistered", status=410)
BUSY = DeliveryResult(Outcome.RETRY, reason="TooManyRequests", status=429, retry_after=3.0)


def test_a_journal_reads_back_what_went_on_the_wire_and_each_answer(tmp_path: Path) -> None:
    journal, key = AnswerJournal(tmp_path), journal_key(7, "send-token")
    journal.on_wire(key, [0, 1, 2], resend=False)
    journal.answered(key, [0, 1, 2], [SENT, GONE, SENT])
    journal.on_wire(key, [3, 4], resend=True)  # not the first line: changes nothing
    journal.answered(key, [3], [BUSY])

    read = AnswerJournal(tmp_path).read(key)

    assert read is not None
    assert read.resend is False
    assert read.answers == {0: SENT, 1: GONE, 2: SENT, 3: BUSY}
    assert read.unanswered == {4}


def test_a_line_cut_by_a_kill_is_the_last_and_is_left_out(tmp_path: Path) -> None:
    journal, key = AnswerJournal(tmp_path), journal_key(7, "send-token")
    journal.on_wire(key, [0, 1], resend=True)
    journal.answered(key, [0], [SENT])
    with (tmp_path / f"{key}.jsonl").open("ab") as file:
        file.write(b'{"answered":[1],"outc')

    read = AnswerJournal(tmp_path).read(key)

    assert read is not None
    assert (read.resend, read.answers, read.unanswered) == (True, {0: SENT}, {1})


def test_a_file_that_is_not_a_journal_is_not_trusted(tmp_path: Path) -> None:
    journal = AnswerJournal(tmp_path)
    bad = {
        "no first line": b'{"wire":[0]}\n{"answered":[0],"outcome":"delivered"}\n',
        "garbage inside": b'{"resend":false}\nnot json\n{"wire":[0]}\n',
        "not positions": b'{"resend":false}\n{"wire":["0"]}\n{"wire":[1]}\n',
        "unknown outcome": b'{"resend":false}\n{"answered":[0],"outcome":"maybe","reason":null,'
        b'"status":null,"retry_after":null,"unknown":false}\n{"wire":[1]}\n',
    }
    for name, content in bad.items():
        (tmp_path / f"{name}.jsonl").write_bytes(content)
        assert journal.read(name) is None, name
    assert journal.read("never written") is None


def test_a_done_batchs_journal_goes_and_old_ones_are_swept(tmp_path: Path) -> None:
    journal = AnswerJournal(tmp_path)
    done, kept, old = (journal_key(i, "send-token") for i in (1, 2, 3))
    for key in (done, kept, old):
        journal.on_wire(key, [0], resend=False)
    journal.forget(done)
    journal.close()  # a stopping worker keeps its journals for whoever takes over
    now = os.stat(tmp_path / f"{kept}.jsonl").st_mtime
    os.utime(tmp_path / f"{old}.jsonl", (now - 2 * 86_400, now - 2 * 86_400))

    assert journal.sweep(86_400, now=now) == 1

    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kept}.jsonl"]


def test_no_folder_journals_nothing(tmp_path: Path) -> None:
    journal, key = AnswerJournal(None), journal_key(7, "send-token")
    journal.on_wire(key, [0], resend=False)
    journal.answered(key, [0], [SENT])
    assert journal.read(key) is None
    assert journal.sweep(0) == 0
