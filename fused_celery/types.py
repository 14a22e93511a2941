"""``fused.types``: as in the reference SDK, the error classes are here too (defined in
:mod:`fused_celery.errors`)."""

from __future__ import annotations

from fused_celery.errors import *  # noqa: F403
from fused_celery.errors import __all__ as _errors_all

__all__ = list(_errors_all)
