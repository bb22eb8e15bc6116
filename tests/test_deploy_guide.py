"""The deployment guide's commands, run (docs/deploy.md; deploy/).

- The systemd units pass `systemd-analyze verify` with nothing to say.
- The example env file holds only real settings, and reads the same in systemd and docker.
- The rolling-deploy rule (expand, then contract a release later) holds for every migration
  but the few the guide lists as needing a stop.
- The Containerfile's steps, run as a shell script when no container engine can build (this
  machine has a docker client and no daemon), install Clarion without its dev extras and with
  the committed browser bundles; then `clarion migrate`, two `clarion serve` and a `clarion
  worker` started with the units' own command lines and the example env file, on a PostgreSQL
  database of their own, behind nginx configured from deploy/nginx.conf (when nginx is
  installed), deliver a push to the APNs simulator and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import trustme
from cryptography.fernet import Fernet

from clarion.config import Settings
from clarion.demo import provision_demo
from tests.conftest import PG_ADMIN_URL
from tests.support.simulator import SimulatorHandle, free_port
from tests.support.waiting import until

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNITS = DEPLOY / "systemd"
GUIDE = REPO / "docs" / "deploy.md"
MIGRATIONS = REPO / "clarion" / "migrations" / "versions"
# Where the units and the Containerfile install Clarion; the test puts it in a temporary folder.
INSTALL_PREFIX = "/opt/clarion"
START_SECONDS = 30.0
STOP_SECONDS = 30.0


# --- systemd units -----------------------------------------------------------------------


def _unit_service(path: Path) -> dict[str, list[str]]:
    """The [Service] section of a unit: every value of each key, in order."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: point it at this checkout's clarion.
    clarion = Path(sys.executable).with_name("clarion")
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace(f"{INSTALL_PREFIX}/bin/clarion", str(clarion))
        (tmp_path / unit.name).write_text(text)
    names = ["clarion-migrate.service", "clarion-serve@8001.service", "clarion-worker@1.service"]
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / name) for name in names)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify answers 0 even for an unknown key or a bad value, which it only reports.
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    for unit in UNITS.glob("*.service"):
        service = _unit_service(unit)
        assert service["User"] == ["clarion"], unit.name
        assert service["NoNewPrivileges"] == ["yes"], unit.name
        assert service["ProtectSystem"] == ["strict"], unit.name
        assert "/etc/clarion/clarion.env" in service["EnvironmentFile"], unit.name


# --- the example env file ----------------------------------------------------------------


def test_env_file_holds_only_real_settings() -> None:
    env_file = DEPLOY / "clarion.env"
    # extra="forbid": a CLARION_ key that names no setting fails here.
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.resolved_queue.value == "postgres"
    assert not settings.is_sqlite
    assert settings.dashboard_secure_cookies is True
    assert settings.secret_key == "", "no secret in the example file"
    known = {f"CLARION_{name.upper()}" for name in Settings.model_fields}
    for key, value in _env_pairs(env_file).items():
        assert key in known, f"{key} is not a Clarion setting"
        # systemd's EnvironmentFile and docker's --env-file quote differently: plain values
        # read the same in both.
        assert not re.search(r"[\"'\s$`\\]", value), f"{key}: quotes, spaces or $ in {value!r}"


def _env_pairs(path: Path) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


# --- the rolling-deploy rule ---------------------------------------------------------------

# Migrations that old and new code cannot run beside: upgrading across one of them needs every
# process stopped while it runs (docs/deploy.md, "Migrations that need a stop"). A new one
# lands here only with its line in the guide; better, split it (expand now, contract later).
NEEDS_A_STOP = {
    "2026-11-24-0106_regions_upper_case",
    "2026-11-24-0711_push_event_counts_and_campaign_open_days",
    "2026-11-24-1400_batch_counters",
    "2026-11-24-1800_audience_bitmaps",
    "2026-12-06-0930_sign_in_failures_per_client",
}

_BACKFILL = re.compile(r"\b(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


@dataclass
class _Operations:
    """What one migration's upgrade() does, as the rule sorts it."""

    created_tables: set[str] = field(default_factory=set)
    added_columns: set[tuple[str, str]] = field(default_factory=set)
    dropped_tables: set[str] = field(default_factory=set)
    dropped_columns: set[tuple[str, str]] = field(default_factory=set)
    contracts: list[str] = field(default_factory=list)
    backfills: list[str] = field(default_factory=list)


class _UpgradeReader:
    """Reads a migration's upgrade() (and the module's helpers it calls) without running it."""

    def __init__(self, module: ast.Module) -> None:
        self.functions = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef)}
        self.constants: dict[str, ast.expr] = {}
        for node in module.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name):
                    self.constants[target.id] = node.value
        self.ops = _Operations()

    def read(self) -> _Operations:
        self._body(self.functions["upgrade"].body, tables={}, loops={})
        return self.ops

    def _body(
        self, body: list[ast.stmt], *, tables: dict[str, str], loops: dict[str, list[str]]
    ) -> None:
        for statement in body:
            self._statement(statement, tables, loops)

    def _statement(
        self, node: ast.stmt, tables: dict[str, str], loops: dict[str, list[str]]
    ) -> None:
        if isinstance(node, ast.With):
            inner = dict(tables)
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and _method(call) == "batch_alter_table"
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    inner[item.optional_vars.id] = self._text(call.args[0], loops)[0]
            self._body(node.body, tables=inner, loops=loops)
            return
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            # A loop over what a function returns (the partitions a query lists) names no
            # table or column of its own: an op call that used its variable would fail here.
            values = [] if isinstance(node.iter, ast.Call) else self._text(node.iter, loops)
            self._body(node.body, tables=tables, loops={**loops, node.target.id: values})
            return
        if isinstance(node, ast.If):
            self._body(node.body + node.orelse, tables=tables, loops=loops)
            return
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            self._call(call, tables, loops)

    def _call(self, call: ast.Call, tables: dict[str, str], loops: dict[str, list[str]]) -> None:
        if isinstance(call.func, ast.Name) and call.func.id in self.functions:
            self._body(self.functions[call.func.id].body, tables=tables, loops=loops)
            return
        method = _method(call)
        owner = call.func.value if isinstance(call.func, ast.Attribute) else None
        if not isinstance(owner, ast.Name) or method is None:
            return
        on_batch = owner.id in tables
        if not on_batch and owner.id != "op":
            return
        args = list(call.args)
        table = tables[owner.id] if on_batch else ""
        if not on_batch and method in {
            "create_table",
            "drop_table",
            "add_column",
            "drop_column",
            "alter_column",
        }:
            table = self._text(args.pop(0), loops)[0]
        keywords = {k.arg: k.value for k in call.keywords if k.arg}
        ops = self.ops
        if method == "create_table":
            ops.created_tables.add(table)
        elif method == "drop_table":
            ops.dropped_tables.add(table)
        elif method == "add_column":
            column = args[0]
            assert isinstance(column, ast.Call)
            for name in self._text(column.args[0], loops):
                ops.added_columns.add((table, name))
                column_keywords = {k.arg: k.value for k in column.keywords if k.arg}
                nullable = column_keywords.get("nullable")
                if (
                    isinstance(nullable, ast.Constant)
                    and nullable.value is False
                    and "server_default" not in column_keywords
                ):
                    ops.contracts.append(f"{table}.{name}: NOT NULL without a server default")
        elif method == "drop_column":
            for name in self._text(args[0], loops):
                ops.dropped_columns.add((table, name))
        elif method == "alter_column":
            for name in self._text(args[0], loops):
                default = keywords.get("server_default")
                if isinstance(default, ast.Constant) and default.value is None:
                    ops.contracts.append(f"{table}.{name}: server default dropped")
                nullable = keywords.get("nullable")
                if isinstance(nullable, ast.Constant) and nullable.value is False:
                    ops.contracts.append(f"{table}.{name}: made NOT NULL")
                if "new_column_name" in keywords or "type_" in keywords:
                    ops.contracts.append(f"{table}.{name}: renamed or retyped")
        elif method == "rename_table":
            ops.contracts.append("table renamed")
        elif method in {"create_unique_constraint", "create_check_constraint"}:
            ops.contracts.append(f"{method} on {table or 'a table'}")
        elif method == "execute":
            found = _BACKFILL.search(" ".join(self._strings(call.args[0])))
            if found:
                ops.backfills.append(found.group(1).upper())

    def _text(self, node: ast.expr, loops: dict[str, list[str]]) -> list[str]:
        """The string(s) an argument stands for: a literal, a loop variable, a constant."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.Name) and node.id in loops:
            return loops[node.id]
        if isinstance(node, ast.Name) and node.id in self.constants:
            return self._text(self.constants[node.id], loops)
        if isinstance(node, ast.Tuple | ast.List):
            return [text for item in node.elts for text in self._text(item, loops)]
        raise AssertionError(f"cannot read a name from {ast.unparse(node)}")

    def _strings(self, node: ast.expr) -> list[str]:
        """Every string literal under `node`, and in the module constants it names."""
        found: list[str] = []
        for child in ast.walk(node):
            if isinstance(child, ast.Constant) and isinstance(child.value, str):
                found.append(child.value)
            elif isinstance(child, ast.Name) and child.id in self.constants:
                found.extend(self._strings(self.constants[child.id]))
        return found


def _method(call: ast.Call) -> str | None:
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def _still_used_before(migration: Path, table: str, column: str | None) -> bool:
    """Whether the code just before the commit that added `migration` still declared what it
    drops: then the same change stopped using it and dropped it, and the old code, still
    running during a rolling deploy, breaks."""
    if not migration.resolve().is_relative_to(REPO):  # not in the history
        return False
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", str(migration)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:  # not committed yet: the working tree's models are the code that drops it
        return False
    parent = f"{added[-1]}^"
    listed = subprocess.run(
        ["git", "grep", "-l", "-F", f'__tablename__ = "{table}"', parent, "--", "clarion"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    for entry in listed:
        if column is None:
            return True
        source = subprocess.run(
            ["git", "show", entry], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        if re.search(rf"^\s+{re.escape(column)}\s*:\s*Mapped", source, re.MULTILINE):
            return True
    return False


def rolling_deploy_breaches(migration: Path) -> list[str]:
    """Why this migration cannot run while the previous release's code runs too; empty when it
    can. The rule (docs/deploy.md, "Migrations during a rolling deploy"):
    1. a migration expands (new tables, columns old code need not write, indexes) or contracts
       (drops, tighter columns), never both: what it replaces is dropped a release later;
    2. a NOT NULL column keeps a server default, so the old code's INSERTs still work;
    3. no backfill of data the old code goes on writing the old way (its rows written after the
       backfill are missed): the new code catches up by itself, or the migration needs a stop;
    4. what a migration drops was no longer used by the release before it."""
    ops = _UpgradeReader(ast.parse(migration.read_text())).read()
    breaches: list[str] = []
    replaced = ops.dropped_tables & ops.created_tables
    expands = (ops.created_tables - replaced) or ops.added_columns
    if (ops.dropped_tables or ops.dropped_columns) and (expands or replaced):
        breaches.append("drops and creates in one migration (rule 1)")
    breaches.extend(f"{c} (rule 2)" for c in ops.contracts)
    breaches.extend(f"backfill {b} (rule 3)" for b in ops.backfills)
    if (REPO / ".git").exists():
        for table in sorted(ops.dropped_tables):
            if _still_used_before(migration, table, None):
                breaches.append(f"table {table} dropped by the change that stopped using it")
        for table, column in sorted(ops.dropped_columns):
            if _still_used_before(migration, table, column):
                breaches.append(f"{table}.{column} dropped by the change that stopped using it")
    return breaches


def test_migrations_follow_the_rolling_deploy_rule() -> None:
    breaches = {
        path.stem: found
        for path in sorted(MIGRATIONS.glob("*.py"))
        if path.stem != "2026-11-23-1805_initial_schema"
        for found in [rolling_deploy_breaches(path)]
        if found
    }
    unexpected = {name: why for name, why in breaches.items() if name not in NEEDS_A_STOP}
    assert not unexpected, (
        "these migrations cannot run beside the previous release's code: split them (expand "
        "now, contract in a later release, docs/deploy.md) or list them in NEEDS_A_STOP and in "
        f"the guide's table of migrations that need a stop: {unexpected}"
    )
    assert set(breaches) == NEEDS_A_STOP, f"no longer breaching: {NEEDS_A_STOP - set(breaches)}"
    guide = GUIDE.read_text()
    for name in NEEDS_A_STOP:
        revision = re.search(r"^revision = '(\w+)'", (MIGRATIONS / f"{name}.py").read_text(), re.M)
        assert revision is not None
        assert f"`{revision.group(1)}`" in guide, f"{name} is not in docs/deploy.md"


def test_the_rule_catches_a_drop_in_the_change_that_stops_using_it(tmp_path: Path) -> None:
    """The checker itself: a migration that adds the new column and drops the old one at once
    (the batch_counters pattern) and one that only expands."""
    header = "from alembic import op\nimport sqlalchemy as sa\nrevision = 'x'\n"
    both = tmp_path / "both.py"
    both.write_text(
        header + "def upgrade():\n"
        "    with op.batch_alter_table('sends') as batch:\n"
        "        batch.add_column(sa.Column('total', sa.Integer(), nullable=True))\n"
        "    op.drop_column('sends', 'count')\n"
    )
    assert rolling_deploy_breaches(both) == ["drops and creates in one migration (rule 1)"]
    expand = tmp_path / "expand.py"
    expand.write_text(
        header + "def upgrade():\n"
        "    op.add_column('apps', sa.Column('flag', sa.Boolean(), server_default=sa.false(),"
        " nullable=False))\n"
        "    op.create_index('ix_apps_flag', 'apps', ['flag'])\n"
    )
    assert rolling_deploy_breaches(expand) == []
    strict = tmp_path / "strict.py"
    strict.write_text(
        header + "def upgrade():\n"
        "    op.add_column('apps', sa.Column('flag', sa.Boolean(), nullable=False))\n"
    )
    assert rolling_deploy_breaches(strict) == [
        "apps.flag: NOT NULL without a server default (rule 2)"
    ]


# --- the Containerfile, the units' processes, the proxy ------------------------------------


def _containerfile_script(root: Path) -> tuple[str, list[str]]:
    """The Containerfile's steps as a shell script installing under `root` instead of /, and
    the image's command (ENTRYPOINT + CMD).

    What cannot run outside an image is left out and said here: FROM (this machine's Python
    3.11 stands for the image's), USER and the `useradd` step (they would change this machine's
    users). pip installs without dependencies: they come from this checkout's .venv
    (PYTHONPATH), so the step checks what `pip install .` puts in the package (its code,
    migrations, templates and committed bundles) in seconds; only the build backend
    (setuptools, in pip's isolated build environment) comes from the index."""
    lines: list[str] = []
    for joined in re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text()).splitlines():
        if joined.strip() and not joined.lstrip().startswith("#"):
            lines.append(joined.strip())
    relocate = re.compile(r"(?<![\w/.$])/(opt/clarion|src|var/lib/clarion)\b")
    script = ["set -eux"]
    command: list[str] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        rest = relocate.sub(lambda m: f"{root}/{m.group(1)}", rest)
        if instruction == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                script.append(f"export {key}={value}")
        elif instruction == "WORKDIR":
            script.append(f"mkdir -p {rest} && cd {rest}")
        elif instruction == "COPY":
            *sources, target = rest.split()
            script.extend(f"cp -r {REPO / source} {target}" for source in sources)
        elif instruction == "RUN":
            # The user of the image: not made on this machine.
            steps = [s.strip() for s in rest.split("&&")]
            rest = " && ".join(s for s in steps if not s.startswith(("useradd", "chown")))
            # set -e does not stop at a failed `a && b`; the image build would.
            script.append(
                "{ " + rest.replace("pip install ", "pip install --no-deps ") + "; } || exit 1"
            )
        elif instruction in {"ENTRYPOINT", "CMD"}:
            command.extend(json.loads(rest))
        else:
            assert instruction in {"FROM", "USER", "VOLUME", "EXPOSE", "STOPSIGNAL"}, line
    return "\n".join(script) + "\n", command


@dataclass
class Deployment:
    root: Path
    prefix: Path  # what /opt/clarion is in the units
    state: Path  # /var/lib/clarion
    environment: dict[str, str]


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, sim: SimulatorHandle
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deploy")
    script, command = _containerfile_script(root)
    assert command[:2] == ["clarion", "serve"]
    assert "--no-workers" in command
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    site_packages = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=root,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(root),
            "PYTHONPATH": site_packages,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    prefix = root / "opt" / "clarion"
    installed = Path(
        subprocess.run(
            [str(prefix / "bin" / "python"), "-c", "import clarion; print(clarion.__file__)"],
            env={"PYTHONPATH": site_packages},
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    ).parent
    assert installed.is_relative_to(prefix), installed  # the copy pip installed, not this checkout
    for bundle in (
        "sdk/web/clarion.js",
        "sdk/web/clarion-sw.js",
        "dashboard/static/inapp-render.js",
    ):
        assert (installed / bundle).read_bytes() == (REPO / "clarion" / bundle).read_bytes()
    assert len(list((installed / "migrations" / "versions").glob("*.py"))) == len(
        list(MIGRATIONS.glob("*.py"))
    )
    assert not (root / "src").exists()
    state = root / "var" / "lib" / "clarion"
    state.mkdir(parents=True, exist_ok=True)

    name = f"clarion_deploydoc_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        environment = {
            "PATH": f"{prefix / 'bin'}:/usr/bin:/bin",
            "HOME": str(state),
            "PYTHONPATH": site_packages,  # the dependencies, as pip would have installed them
            **_env_pairs(DEPLOY / "clarion.env"),
            # What secret.env (or a drop-in) sets on a real machine:
            "CLARION_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
            "CLARION_SECRET_KEY": Fernet.generate_key().decode(),
            "CLARION_VAR_DIR": str(state / "var"),
            "CLARION_APNS_PRODUCTION_URL": sim.base_url,
            "CLARION_APNS_SANDBOX_URL": sim.base_url,
            "CLARION_FCM_URL": sim.base_url,
            "CLARION_PROVIDER_CA_FILE": str(sim.ca_file),
            "CLARION_OUTBOUND_ALLOW": "127.0.0.1",
        }
        yield Deployment(root, prefix, state, environment)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Unit:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(deployment: Deployment, unit: str, instance: str = "") -> Unit:
    """Starts what systemd would for `unit` (instance `%i`): its ExecStart, in its working
    directory, with its environment files (here: the example one, then the test's secrets)."""
    service = _unit_service(UNITS / unit)
    (command,) = service["ExecStart"]
    command = command.replace("%i", instance).replace(INSTALL_PREFIX, str(deployment.prefix))
    (workdir,) = service["WorkingDirectory"]
    assert workdir == "/var/lib/clarion"
    log = deployment.root / f"{unit.replace('@', '-')}{instance}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command.split(),
            cwd=deployment.state,
            env=deployment.environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return Unit(f"{unit}{instance}", process, log)


def _stop(unit: Unit) -> int:
    """SIGTERM, as systemd's KillSignal; the exit status it ends with."""
    if unit.process.poll() is None:
        unit.process.send_signal(signal.SIGTERM)
    try:
        return unit.process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        unit.process.kill()
        unit.process.wait()
        raise AssertionError(f"{unit.name} did not stop on SIGTERM:\n{unit.output()}") from None


def _answers(url: str, **options: object) -> bool:
    try:
        return httpx.get(url, timeout=2.0, **options).status_code == 200  # type: ignore[arg-type]
    except httpx.TransportError:
        return False


def _trusting(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


@contextlib.contextmanager
def _nginx(root: Path, ports: list[int]) -> Iterator[tuple[str, Path] | None]:
    """nginx with deploy/nginx.conf (upstreams, certificate and ports made local); None when
    nginx is not installed (`apt-get install nginx-core`)."""
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        yield None
        return
    folder = root / "nginx"
    folder.mkdir()
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "clarion.example.com")
    certificate.private_key_pem.write_to_path(str(folder / "privkey.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(folder / "fullchain.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    http_port, https_port = free_port(), free_port()
    site = (DEPLOY / "nginx.conf").read_text()
    site = re.sub(r"(?m)^\s*server 127\.0\.0\.1:\d+.*\n", "", site)
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=0;\n" for port in ports)
    site = site.replace("    keepalive 64;", servers + "    keepalive 64;")
    site = re.sub(
        r"listen (\[::\]:)?80;",
        lambda m: "" if m.group(1) else f"listen 127.0.0.1:{http_port};",
        site,
    )
    site = re.sub(
        r"listen (\[::\]:)?443 ssl http2;",
        lambda m: "" if m.group(1) else f"listen 127.0.0.1:{https_port} ssl http2;",
        site,
    )
    site = site.replace("/etc/ssl/clarion", str(folder))
    (folder / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log;\nevents {{}}\n"
        f"http {{\naccess_log off;\nclient_body_temp_path {folder};\nproxy_temp_path {folder};\n"
        f"{site}\n}}\n"
    )
    checked = subprocess.run(
        [nginx, "-t", "-p", str(folder), "-c", str(folder / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen(
        [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"https://127.0.0.1:{https_port}"
    try:
        until(
            lambda: (
                process.poll() is None
                and _answers(f"{base}/openapi.json", verify=_trusting(folder / "ca.pem"))
            ),
            what="nginx answering",
            timeout=START_SECONDS,
        )
        yield base, folder / "ca.pem"
    finally:
        process.terminate()  # nginx's fast shutdown
        process.wait(STOP_SECONDS)


@pytest.mark.postgres
def test_units_migrate_serve_and_deliver_behind_the_proxy(deployment: Deployment) -> None:
    migrate = _start(deployment, "clarion-migrate.service")
    assert migrate.process.wait(120) == 0, migrate.output()
    assert "is up to date" in migrate.output()

    settings = Settings(
        **{  # type: ignore[arg-type]
            key.removeprefix("CLARION_").lower(): value
            for key, value in deployment.environment.items()
            if key.startswith("CLARION_")
        }
    )
    sim_url = deployment.environment["CLARION_APNS_PRODUCTION_URL"]
    asyncio.run(provision_demo(settings, sim_url=sim_url, api_url="https://clarion.example.com"))
    demo = json.loads((settings.var_dir / "demo.json").read_text())

    ports = [free_port(), free_port()]
    units = [_start(deployment, "clarion-serve@.service", str(port)) for port in ports]
    units.append(_start(deployment, "clarion-worker@.service", "1"))
    try:
        for port, unit in zip(ports, units, strict=False):
            until(
                lambda port=port, unit=unit: (
                    unit.process.poll() is None
                    and _answers(f"http://127.0.0.1:{port}/openapi.json")
                ),
                what=f"{unit.name} answering",
                timeout=START_SECONDS,
            )
        worker = units[-1]
        until(
            lambda: (
                "worker running on postgres queue" in worker.output()
                or worker.process.poll() is not None
            ),
            what="the worker started",
            timeout=START_SECONDS,
        )
        assert worker.process.poll() is None, worker.output()

        with _nginx(deployment.root, ports) as proxy:
            base, verify = proxy if proxy is not None else (f"http://127.0.0.1:{ports[0]}", None)
            ios = demo["apps"]["ios"]
            with httpx.Client(
                base_url=base, verify=_trusting(verify) if verify else True, timeout=10.0
            ) as client:
                headers = {"X-Authorization": demo["rest_api_key"]}
                sent = client.post(
                    f"/1.1/{ios['api_key']}/transactional/send",
                    headers=headers,
                    json={
                        "group_id": "deploy-guide",
                        "recipients": {"custom_ids": ["demo-user"]},
                        "message": {"title": "Hello", "body": "Through the proxy"},
                    },
                )
                assert sent.status_code == 201, sent.text
                token = sent.json()["token"]

                def delivered() -> bool:
                    answer = client.get(
                        f"/1.1/{ios['api_key']}/transactional/sends/{token}", headers=headers
                    )
                    return answer.status_code == 200 and answer.json().get("sent") == 1

                until(delivered, what="the push sent by the worker", timeout=START_SECONDS)
                if proxy is not None:
                    # Both API processes serve through the proxy (least_conn, keepalive).
                    for _ in range(4):
                        assert client.get("/openapi.json").status_code == 200
    finally:
        codes = {unit.name: _stop(unit) for unit in units}
    for unit in units[:-1]:
        # uvicorn ends by raising the SIGTERM it caught again, once its requests are answered:
        # systemd counts that as a clean stop.
        assert codes[unit.name] in (0, -signal.SIGTERM), unit.output()
        assert "Application shutdown complete" in unit.output(), unit.output()
    assert codes[units[-1].name] == 0, units[-1].output()  # the worker returns
    for unit in units:
        assert "Traceback" not in unit.output(), unit.output()
