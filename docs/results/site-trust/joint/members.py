#!/usr/bin/env python3
"""`csipos train site` with another number of joint-head members (issue 13, a results
script): sets `training.multibs.JOINT_MEMBERS`, then runs the CLI with the remaining
arguments. Every other step of the adaptation is the product's, so a version adapted
with ``--members 1`` is the product before the ensemble, seed for seed.

    python3 docs/results/site-trust/joint/members.py K train site ARGS...
"""

from __future__ import annotations

import sys

from service.cli import app
from training import multibs

if __name__ == "__main__":
    multibs.JOINT_MEMBERS = int(sys.argv[1])
    app(args=sys.argv[2:])
