"""Multi-process training helpers: which process owns the run directory, and gathering
uneven per-rank tensors.

Lightning's launchers start the extra processes in three ways, each announcing the rank in
the environment before our code runs in that process:

- its own subprocess launcher (``strategy=ddp``) re-runs the command line with ``LOCAL_RANK``
  (and ``NODE_RANK`` on multi-node jobs) set; the first process sees neither until
  ``trainer.fit`` starts, and that process is global rank 0;
- ``torchrun`` sets ``RANK`` / ``LOCAL_RANK`` / ``GROUP_RANK`` in every process;
- SLURM (``srun``) sets ``SLURM_PROCID`` (global) and ``SLURM_LOCALID``.

Any of these set to a non-zero value means "not global rank 0".
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

#: Environment variables that carry a (global, node or local) rank under the launchers above.
RANK_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "SLURM_PROCID",
    "JSM_NAMESPACE_RANK",
)


def is_launcher_rank_zero() -> bool:
    """True in the process that is (or will become) global rank 0, or in a single process.

    Usable before the Trainer exists: only this process creates, checks or wipes the run
    directory, so the re-executed ranks never see or delete what rank 0 just wrote.
    """
    for key in RANK_VARIABLES:
        value = os.environ.get(key, "").strip()
        if value and value != "0":
            return False
    return True


def owns_run_dir(devices: int | str | list[int], num_nodes: int = 1) -> bool:
    """Whether this process creates and writes the run directory of a training run.

    A run configured for one device on one node is a single process whatever the environment
    says (e.g. one of several ``bonefrac tune`` workers started by ``srun``); otherwise only
    the launcher's rank 0 does.
    """
    one_device = devices == 1 or devices == "1" or (isinstance(devices, list) and len(devices) == 1)
    return (one_device and num_nodes == 1) or is_launcher_rank_zero()


def gather_uneven(module, values: Tensor) -> Tensor:  # noqa: ANN001
    """Concatenate a 1-D tensor from every rank (rank order), allowing different lengths.

    ``LightningModule.all_gather`` needs equal shapes, so each rank pads to the longest part
    and the padding is cut off again after the gather. With one process: ``values`` as is.
    """
    world = module.trainer.world_size if module._trainer is not None else 1
    if world <= 1:
        return values
    sizes = module.all_gather(torch.tensor([len(values)], device=values.device)).reshape(-1)
    longest = int(sizes.max())
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: len(values)] = values
    parts = module.all_gather(padded).reshape(world, longest)
    return torch.cat([parts[r, : int(sizes[r])] for r in range(world)])
