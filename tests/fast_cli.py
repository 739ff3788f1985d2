"""`python tests/fast_cli.py ARGS...`: the vlbench command line with the tests' quick tiny backbones,
for tests that need a real process of their own (SIGKILL, SIGINT, SIGTERM)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import FAST_BACKBONE  # noqa: E402

from vlbench import backbones  # noqa: E402

backbones.BACKBONES["tiny"] = FAST_BACKBONE

from vlbench.cli import app  # noqa: E402

if __name__ == "__main__":  # worker processes (spawn) import this module again: they must not rerun the CLI
    app(prog_name="vlbench")
