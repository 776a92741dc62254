#!/usr/bin/env python3
"""`csipos` with the joint head's neighbour terms off (the ensemble calibrated as before
them; each BS's head keeps its terms): its reference is empty, below `REF_NEIGHBOURS`.
joint-off.py train site ...  (as csipos)"""

import sys
from typing import Any

import numpy as np

import training.multibs as multibs
from service.cli import main

ensemble = multibs._joint_ensemble


def without_reference(*args: Any, reference: Any) -> Any:
    return ensemble(*args, reference=reference.subset(np.zeros(0, dtype=np.int64)))


multibs._joint_ensemble = without_reference  # type: ignore[assignment]
sys.exit(main())
