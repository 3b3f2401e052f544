#!/usr/bin/env python3
"""torchrun (same flags) whose clean stop exits 0: the first SIGTERM / SIGINT lets every worker finish
its step and save, and torchrun exits 0 when they all did. Logic and why: flm_ext/elastic.py.

    python tools/torchrun.py --nnodes 24 --nproc-per-node 8 ... pretrain_flm.py ...
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flm_ext.elastic import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
