#!/usr/bin/env python3
"""`csipos` with the heads' neighbour terms off (the calibration before them): every
validation split is below `REF_MIN_VAL`.  off.py train site ...  (as csipos)"""

import sys

import training.calibration as calibration
from service.cli import main

calibration.REF_MIN_VAL = 10**9
sys.exit(main())
