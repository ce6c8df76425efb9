"""The training path (train.trajectory): θ_t − θ₀ every N optimizer steps, for PCA directions of the loss surface.

trajectory.npy in the run folder is a float16 array of shape (T, d), one row per recorded step: steps 0, N, 2N,
… and the last step (trajectory.json lists them), d the trainable weights in the Objective's order. float16
keeps 11 significant bits, a relative error of at most 4.9e-4 (absolute 6e-8 below 6.1e-5), far below the
step-to-step motion the PCA looks at, at a quarter of the size of fp32 weights: 164 MB per row at
DistilGPT2's 82M weights. The file is created at its full size before training (a full disk is one clear
error, not a crash later), and rows are written as training reaches them; last.pt records how many are
written, so a resumed run rewrites the rows after it and the file ends the same as without the kill.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from optimization.objective import flatten
from utils.errors import CorruptFileError
from utils.io import new_memmap, seal, write_json
from models.runs import TRAJECTORY, TRAJECTORY_INDEX


def recorded_steps(every: int, total_steps: int) -> list[int]:
    """The optimizer steps whose weights the trajectory keeps: 0, every, 2·every, … and the last."""
    steps = list(range(0, total_steps + 1, every))
    return steps if steps[-1] == total_steps else steps + [total_steps]


class TrajectoryRecorder:
    def __init__(self, folder: Path, every: int, total_steps: int, params: list[torch.Tensor], init: torch.Tensor,
                 rows_written: int | None):
        """`params`: the model's trainable weights, `init` θ₀ flat over them; `rows_written`: how many rows a
        resumed run had written (None: a fresh start, the file is created)."""
        self.path, self.index = Path(folder) / TRAJECTORY, Path(folder) / TRAJECTORY_INDEX
        self.steps = recorded_steps(every, total_steps)
        self.params = params
        dim = sum(p.numel() for p in params)
        if rows_written is None:
            self.rows = new_memmap(self.path, np.float16, (len(self.steps), dim))
            self.written = 0
        else:
            try:
                self.rows = np.load(self.path, mmap_mode="r+")
            except (OSError, ValueError) as err:
                raise CorruptFileError(self.path, f"it cannot be read: {err}") from None
            if self.rows.shape != (len(self.steps), dim) or self.rows.dtype != np.float16:
                raise CorruptFileError(self.path, f"it holds {self.rows.shape} {self.rows.dtype} values, "
                                       f"not the {(len(self.steps), dim)} float16 ones of this run")
            self.written = rows_written
        self.init = init.detach().float().cpu()

    @torch.no_grad()
    def record(self, step: int) -> None:
        """Write the row of `step` if the trajectory keeps it (steps come in order)."""
        if self.written >= len(self.steps) or step != self.steps[self.written]:
            return
        weights = flatten([p.detach() for p in self.params]).float().cpu()
        self.rows[self.written] = (weights - self.init).numpy().astype(np.float16)
        self.written += 1

    def flush(self) -> None:
        """Put the rows written so far on disk (before last.pt says they are there)."""
        self.rows.flush()

    def finish(self) -> None:
        """Flush the rows, record the file's checksum and write the index (the steps of the rows)."""
        self.rows.flush()
        seal(self.path)
        write_json(self.index, {"steps": self.steps, "dim": int(self.rows.shape[1]), "dtype": "float16",
                                "delta_from": "init"})
