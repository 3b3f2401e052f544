#!/usr/bin/env python3
"""torchrun (same flags) whose clean stop exits 0: the first SIGTERM / SIGINT lets every worker finish
its step and save, and torchrun exits 0 when they all did. Logic and why: flm_ext/elastic.py.

    python tools/torchrun.py --nnodes 24 --nproc-per-node 8 ... pretrain_flm.py ...
"""
import sys

from flm_ext.elastic import main

if __name__ == "__main__":
    sys.exit(main())
