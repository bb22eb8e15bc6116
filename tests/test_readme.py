"""The README's commands as a new user pastes them: a real `clarion dev` (what `make run` starts)
in a temporary directory, and one bash session in that directory, the user's second terminal,
into which each shell block of README.md is pasted in turn (state carries from block to block).

Each block must run without a failing command and print, in order, the JSON answers its
`# {...}` comments show (a string with `…` is any string, `[…]` any list, `,…}` more keys).
A block whose answers come from the workers (the simulator's view of a send) is pasted again
until they match or WAIT runs out, as a user would, when it only reads (curl GETs alone).
Blocks that are no walkthrough start with `# Not a script:` and say why; they are skipped.

Two liberties, both checked: the URLs' ports 8000 and 8443 become the free ports this
`clarion dev` got, and `curl` fails on a non-2xx answer (`--fail-with-body`) and ends its
output with a newline, so that each answer is a line of its own.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import selectors
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.dev import BIN, Dev, dev_environment, running_dev
from tests.support.waiting import until

# Each block continues the one before, in one terminal, as a reader pastes them: file order
# even in a shuffled run (tests/conftest.py).
pytestmark = pytest.mark.in_order

README = Path(__file__).resolve().parent.parent / "README.md"
NOT_A_SCRIPT = "# Not a script:"
WAIT = 30.0  # seconds for a block: the CLI commands start Python, ~2 s each at load 9
FAILED = "README-TEST FAILED"
# The session's first lines: report every failing command (errtrace: inside functions and
# command substitutions too; pipefail: anywhere in a pipe), and curl as described above.
PRELUDE = f"""
set -E -o pipefail
trap 'echo "{FAILED}: exit $? from: $BASH_COMMAND"' ERR
curl() {{ command curl --fail-with-body -w '\\n' "$@"; }}
"""


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence in README.md
    text: str

    @property
    def why_not(self) -> str | None:
        first = self.text.splitlines()[0]
        return first.removeprefix(NOT_A_SCRIPT).strip() if first.startswith(NOT_A_SCRIPT) else None

    @property
    def expected(self) -> list[Any]:
        """The answers its comments show, in order."""
        answers = []
        for line in self.text.splitlines():
            if line.startswith("# {"):
                shown = _balanced(line[2:])
                shown = shown.replace(",…}", ', "…": "…"}').replace("[…]", '"…"')
                answers.append(json.loads(shown))
        return answers

    @property
    def only_reads(self) -> bool:
        """Only curl GETs: pasting it again changes nothing."""
        commands = [
            line
            for line in self.text.splitlines()
            if line.strip() and not line.startswith("#") and not line.startswith(" ")
        ]
        return all(c.startswith("curl ") for c in commands) and not re.search(
            r"\s-(X|d)\s", self.text
        )


def _balanced(text: str) -> str:
    """`text` up to the brace that closes its first (what follows is a remark)."""
    depth = 0
    for end, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return text[: end + 1]
    raise AssertionError(f"unbalanced answer in a README comment: {text}")


def shell_blocks(markdown: str) -> list[Block]:
    blocks, opened, lines = [], 0, list[str]()
    for number, line in enumerate(markdown.splitlines(), start=1):
        if opened == 0 and line.strip() == "```sh":
            opened, lines = number, []
        elif opened and line.strip() == "```":
            blocks.append(Block(opened, "\n".join(lines)))
            opened = 0
        elif opened:
            lines.append(line)
    assert opened == 0, f"README.md:{opened}: a shell block is never closed"
    return blocks


BLOCKS = shell_blocks(README.read_text())


def matches(shown: Any, answer: Any) -> bool:
    """`answer` is what the README shows: the same keys and values, `…` standing for any."""
    if shown == "…" or (isinstance(shown, str) and "…" in shown and isinstance(answer, str)):
        return True
    if isinstance(shown, dict):
        return isinstance(answer, dict) and all(
            key == "…" or (key in answer and matches(value, answer[key]))
            for key, value in shown.items()
        )
    return bool(shown == answer)


def unmatched(expected: list[Any], output: str) -> list[Any]:
    """The expected answers not found, in order, among the JSON lines of `output`."""
    answers = []
    for line in output.splitlines():
        try:
            answers.append(json.loads(line))
        except ValueError:
            continue
    left = list(expected)
    for answer in answers:
        if left and matches(left[0], answer):
            left.pop(0)
    return left


@dataclass
class Terminal:
    """The user's second terminal: one bash process in the `clarion dev` directory."""

    dev: Dev
    process: subprocess.Popen[bytes]
    pasted: int = 0
    buffer: bytes = b""
    outputs: dict[int, str] = field(default_factory=dict)

    def paste(self, script: str) -> str:
        self.pasted += 1
        path = self.dev.directory / f"pasted-{self.pasted}.sh"
        path.write_text(script + "\n")
        done = f"__pasted_{self.pasted}_done__"
        assert self.process.stdin is not None
        self.process.stdin.write(f". ./{path.name}\necho {done}\n".encode())
        self.process.stdin.flush()
        return self._read_until(done)

    def _read_until(self, marker: str) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + WAIT
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while (marker + "\n").encode() not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise AssertionError(f"no end of block within {WAIT} s:\n{self.text()}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the shell exited:\n{self.text()}")
                self.buffer += chunk
        output, _, self.buffer = self.buffer.partition((marker + "\n").encode())
        return output.decode()

    def text(self) -> str:
        return self.buffer.decode(errors="replace")

    def run(self, block: Block) -> str:
        """Paste the block (again, while it only reads and its answers are not there yet)."""
        script = self.dev_ports(block.text)
        outputs: list[str] = []

        def answered() -> bool:
            outputs.append(self.paste(script))
            if FAILED in outputs[-1] or not block.only_reads:
                return True  # a failure, or a block not to paste twice: said below
            return not unmatched(block.expected, outputs[-1])

        with contextlib.suppress(AssertionError):  # a timeout: said below, with the answers
            until(answered, what=f"README.md:{block.line}", timeout=WAIT, every=0.1)
        assert FAILED not in outputs[-1], f"README.md:{block.line}:\n{script}\n---\n{outputs[-1]}"
        missing = unmatched(block.expected, outputs[-1])
        assert not missing, (
            f"README.md:{block.line}: answers not seen: {missing}\n{script}\n---\n{outputs[-1]}"
        )
        self.outputs[block.line] = outputs[-1]
        return outputs[-1]

    def dev_ports(self, text: str) -> str:
        text = text.replace("127.0.0.1:8000", f"127.0.0.1:{self.dev.port}")
        text = text.replace("127.0.0.1:8443", f"127.0.0.1:{self.dev.sim_port}")
        # Any other spelling of make run's ports would reach whatever else listens there.
        assert not re.search(r":(8000|8443)\b", text), f"a URL the test cannot redirect:\n{text}"
        return text

    def catch_up(self, line: int) -> None:
        """Run every runnable block before README.md:`line` not run yet, as the user did."""
        for block in BLOCKS:
            if block.line < line and block.why_not is None and block.line not in self.outputs:
                self.run(block)


@pytest.fixture(scope="module")
def terminal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminal]:
    directory = tmp_path_factory.mktemp("clone")
    # The README calls `.venv/bin/clarion`, the clone's virtualenv: this one's.
    (directory / ".venv").mkdir()
    (directory / ".venv" / "bin").symlink_to(BIN)
    with running_dev(directory) as dev:
        process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=directory,
            env=dev_environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            session = Terminal(dev, process)
            session.paste(PRELUDE)
            yield session
        finally:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=WAIT)


def test_every_shell_block_runs_or_says_why_not() -> None:
    runnable = [block for block in BLOCKS if block.why_not is None]
    for block in BLOCKS:
        assert block.why_not != "", f"README.md:{block.line}: `{NOT_A_SCRIPT}` says not why"
    # The walkthrough: send, look, user data, campaigns, imports and exports.
    assert len(runnable) >= 5, [block.line for block in runnable]
    assert runnable[0].text.startswith(". var/demo.env"), "the first loads the demo's keys"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{block.line}" for block in BLOCKS])
def test_readme_block_works_as_pasted(terminal: Terminal, block: Block) -> None:
    if block.why_not is not None:
        pytest.skip(f"README.md:{block.line} is not a script: {block.why_not}")
    terminal.catch_up(block.line)
    terminal.run(block)


def test_make_run_prints_every_demo_key(terminal: Terminal) -> None:
    printed = (terminal.dev.directory / "dev.log").read_text()
    demo = terminal.dev.demo()
    apps = demo["apps"]
    assert isinstance(apps, dict)
    keys = [demo["rest_api_key"]]
    for app in apps.values():
        keys += [app["api_key"], app["dev_api_key"], app["token"]]
    assert len(keys) == 10
    for key in keys:
        assert str(key) in printed
    assert ". var/demo.env" in printed


def test_the_daily_export_of_yesterday_has_the_demo_history(terminal: Terminal) -> None:
    terminal.catch_up(len(README.read_text().splitlines()) + 1)
    apps = terminal.dev.demo()["apps"]
    assert isinstance(apps, dict)
    out = terminal.dev.directory / "var" / "exports" / str(apps["ios"]["app_id"]) / "out"
    (exported,) = out.glob("*.csv")
    header, *rows = exported.read_text().splitlines()
    assert header.startswith("date;event_type;")
    # The demo's day of history: sent, then opened, by the demo user on the iOS app.
    kinds = [row.split(";")[1] for row in rows if "demo-history" in row]
    assert kinds == ["push_sent", "push_opened"], exported.read_text()


def test_the_demo_pages_curl_line_works_as_pasted(terminal: Terminal) -> None:
    """/demo/ shows how to create an in-app campaign with curl: once var/demo.env is loaded."""
    terminal.catch_up(BLOCKS[0].line + 1)
    page = httpx.get(f"{terminal.dev.url}/demo/").text
    shown = re.search(r'<pre id="curl">(.*?)</pre>', page, re.DOTALL)
    assert shown is not None
    output = terminal.paste(html.unescape(shown.group(1)))
    assert FAILED not in output, output
    assert not unmatched([{"campaign_token": "…"}], output), output
