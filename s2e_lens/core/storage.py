"""How tensors are stored and in what precision they are computed, whatever the model's dtype
and device.

Plans, steering vectors and statistics live on the CPU in float32: they are small (one
vector per layer, one scalar per head or neuron), they are saved and compared across models
in any dtype, and numpy, pandas and safetensors readers all accept float32. Maths on a
model's weights runs on the weights' device in float32 or wider. Accumulators over many
tokens are float64 where the device has it (Apple's MPS does not) and float32 elsewhere.
"""

from __future__ import annotations

import torch

STORAGE_DTYPE = torch.float32
# dtypes a model may be loaded in or held in; anything else (int8, float8, ...) is refused
MODEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def stored(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as kept in plans, vectors and statistics: detached, CPU, float32.

    >>> stored(torch.ones(2, dtype=torch.bfloat16)).dtype
    torch.float32
    """
    return tensor.detach().to(device="cpu", dtype=STORAGE_DTYPE)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype for maths on weights held in ``dtype``: float32, or float64 when they are.

    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def accumulator_dtype(device: torch.device | str) -> torch.dtype:
    """float64 for sums over many tokens, except on devices without it (MPS): float32.

    >>> accumulator_dtype("cpu"), accumulator_dtype("mps")
    (torch.float64, torch.float32)
    """
    return torch.float32 if torch.device(device).type == "mps" else torch.float64
