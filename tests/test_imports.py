"""The serving-side package must stay torch-free: scoring embeddings never loads torch."""

import subprocess
import sys


def test_core_and_cli_do_not_import_torch(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "import sculptserve.cli, sculptserve.lps, sculptserve.metrics, sculptserve.mmd, "
        "sculptserve.priors\n"
        "z = np.random.default_rng(0).normal(size=(200, 3))\n"
        "sculptserve.lps.latent_predictability(z, 'linear')\n"
        "sculptserve.metrics.ks_to_prior(z, sculptserve.priors.parse_prior('gaussian', dim=3))\n"
        "sculptserve.mmd.permutation_test(z[:100], z[100:], n_permutations=10)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
