"""Quality checks by subsystem, one small function each (see :mod:`.registry`).

Modules: :mod:`.daq`, :mod:`.beam`, :mod:`.srd`, :mod:`.ecal`, then the checks of
every subsystem — :mod:`.reference` (spectra against a reference) and
:mod:`.channels` (problem channels per subsystem). A new check is a function in
the module of its subsystem, decorated with ``@register("<subsystem>")``.
"""

from . import daq, beam, srd, ecal, reference, channels  # noqa: F401  (import order = check order)
from .registry import REGISTRY, by_subsystem, register

__all__ = ["REGISTRY", "register", "by_subsystem"]
