from collections.abc import Iterator

import httpx
import pytest

from tests.support.simulator import SimulatorHandle, running_simulator


@pytest.fixture(scope="session")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    with running_simulator(tmp_path_factory.mktemp("sim")) as handle:
        yield handle


@pytest.fixture(scope="session")
def control(simulator: SimulatorHandle) -> Iterator[httpx.Client]:
    """HTTP/1.1 client for the control API (and the HTTP/1.1 fallback)."""
    with simulator.control_client() as client:
        yield client


@pytest.fixture(scope="session")
def h2_client(simulator: SimulatorHandle) -> Iterator[httpx.Client]:
    with simulator.control_client(http2=True) as client:
        yield client


@pytest.fixture(autouse=True)
def _reset_simulator(request: pytest.FixtureRequest) -> Iterator[None]:
    """Faults, dead tokens and counts must not leak from one test into the next: every test
    that used the shared simulator (through `control` or only through `h2_client`) resets it."""
    yield
    if "simulator" in request.fixturenames:
        request.getfixturevalue("control").post("/_sim/reset").raise_for_status()
