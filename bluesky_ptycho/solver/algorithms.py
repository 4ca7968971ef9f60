"""The registry of reconstruction algorithms: the one place that lists them.

Each entry names the :class:`~.engine.Engine` that runs it, says in a line
what it is, and pins the settings that make it what it is (ePIE is the rPIE
engine with ``alpha = 1``). Settings validation, the CLI's choices and the
:class:`~.reconstructor.Reconstructor` all read this registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .dm import DifferenceMap
from .engine import Engine
from .lsqml import LSQML
from .rpie import RPIE


@dataclass(frozen=True)
class Algorithm:
    """One reconstruction algorithm.

    Attributes
    ----------
    name
        What ``ReconstructionSettings.algorithm`` and the CLI's ``--algorithm`` call it.
    engine
        The engine class that iterates it.
    summary
        One line for ``--help`` and the docs.
    pinned
        Settings this algorithm fixes, whatever else was asked for.
    """

    name: str
    engine: type[Engine]
    summary: str
    pinned: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


REGISTRY: Mapping[str, Algorithm] = MappingProxyType(
    {
        algorithm.name: algorithm
        for algorithm in (
            Algorithm("rpie", RPIE, "regularised PIE (Maiden et al. 2017), minibatched"),
            Algorithm("epie", RPIE, "ePIE: rPIE with alpha = 1", MappingProxyType({"alpha": 1.0})),
            Algorithm("dm", DifferenceMap, "difference map (Thibault et al. 2009), RAAR-relaxed"),
            Algorithm("lsqml", LSQML, "least-squares maximum likelihood (Odstrcil et al. 2018)"),
        )
    }
)
