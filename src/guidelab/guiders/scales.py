"""Explicit converters between the two ways papers write a guidance scale (docs/methods.md §0).

guidelab's public API always uses the **Ho/diffusers form** ``guided = u + γ·(c − u)`` (γ = 1 is the
conditional model, γ = 0 the unconditional one). Papers that write ``guided = c + w·(c − u)`` (the "extra"
form) mean ``γ = 1 + w``. A setting copied from such a paper goes through :func:`extra_to_ho`; nothing in the
library guesses which form a number is in.

>>> extra_to_ho(6.5)
7.5
>>> ho_to_extra(7.5)
6.5
"""

from __future__ import annotations

from guidelab.guiders.context import Scale

__all__ = ["extra_to_ho", "ho_to_extra"]


def extra_to_ho(w: Scale) -> Scale:
    """γ = 1 + w: a scale written in the extra form ``c + w·(c − u)`` as the Ho form ``u + γ·(c − u)``.

    Args:
        w: extra-form weight, a number or a per-sample tensor (batch,).
    """
    return 1 + w


def ho_to_extra(gamma: Scale) -> Scale:
    """w = γ − 1: a Ho-form scale ``u + γ·(c − u)`` as the extra-form weight of ``c + w·(c − u)``.

    Args:
        gamma: Ho-form scale, a number or a per-sample tensor (batch,).
    """
    return gamma - 1
