#!/usr/bin/env python3
"""µP hyper-parameter transfer and loss prediction (µScaling); see flm_ext/mup/cli.py and
`python tools/predict_loss.py --help`. Sub-commands: coord-check, search, sweep, fit, check."""
import sys

from flm_ext import quiet_megatron_import_warnings

quiet_megatron_import_warnings()
from flm_ext.mup.cli import main  # noqa: E402

if __name__ == "__main__":  # runs are subprocesses; keep the guard for anything that re-imports __main__
    sys.exit(main())
