"""`python -m clarion.sim --host H --port P --state-dir D`: run the simulators in the foreground."""

import argparse
from pathlib import Path

from clarion.sim.server import run


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m clarion.sim", description="APNs, FCM and Web Push simulators"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--state-dir", type=Path, default=Path(".clarion-sim"))
    args = parser.parse_args()
    run(args.host, args.port, args.state_dir)


if __name__ == "__main__":
    main()
