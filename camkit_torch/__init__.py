"""camkit's PyTorch backend.

This module is what the ``camkit`` entry point loads: it registers the backend without
importing torch. The provider itself lives in :mod:`camkit_torch._provider` and is imported only
when a ``torch.nn.Module`` is explained.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import camkit

__all__ = ["camkit_backends"]


def _can_handle(model: Any) -> bool:
    # A torch model can only exist if torch is already imported: check before isinstance.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


@camkit.hookimpl
def camkit_backends() -> Sequence[camkit.Backend]:
    return [
        camkit.Backend(
            name="torch",
            provider="camkit_torch._provider:TorchProvider",
            can_handle=_can_handle,
            available=camkit.module_available("torch"),
            priority=10,
            install="pip install 'camkit[torch]'",
        )
    ]
