"""What the import-linter contracts (pyproject.toml, tests/test_architecture.py) cannot say.

The contracts forbid torch on the serving and statistics side outright. The CLI may import
training (and so torch) inside `sculpt train`, but only there: importing the command line
itself, which every serving command goes through, must not load torch.
"""

import subprocess
import sys


def test_cli_import_does_not_load_torch(tmp_path):
    code = (
        "import sys\n"
        "import sculptserve.cli, sculptserve.__main__\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
