"""Pretext tasks; each module defines one :class:`~fedvssl.ssl.base.SSLMethod`."""

from fedvssl.ssl.base import PretextModel, SSLMethod

__all__ = ["PretextModel", "SSLMethod"]
