"""The registry of reconstruction algorithms: the one place that lists them.

Each entry names the :class:`~.engine.Engine` that runs it, its options
dataclass (ePIE is the rPIE engine with options that pin ``alpha = 1``) and
says in a line what it is. Settings validation, the CLI's choices and options,
and the :class:`~.reconstructor.Reconstructor` all read this registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .dm import DifferenceMap, DMOptions
from .engine import Engine
from .lsqml import LSQML, LSQMLOptions
from .options import AlgorithmOptions
from .rpie import RPIE, EPIEOptions, RPIEOptions


@dataclass(frozen=True)
class Algorithm:
    """One reconstruction algorithm.

    Attributes
    ----------
    name
        What ``ReconstructionSettings.algorithm`` and the CLI's ``--algorithm`` call it.
    engine
        The engine class that iterates it.
    options
        Its options dataclass (``ReconstructionSettings.options``).
    summary
        One line for ``--help`` and the docs.
    """

    name: str
    engine: type[Engine]
    options: type[AlgorithmOptions]
    summary: str


REGISTRY: Mapping[str, Algorithm] = MappingProxyType(
    {
        algorithm.name: algorithm
        for algorithm in (
            Algorithm("rpie", RPIE, RPIEOptions, "regularised PIE (Maiden et al. 2017), minibatched"),
            Algorithm("epie", RPIE, EPIEOptions, "ePIE: rPIE with alpha = 1"),
            Algorithm("dm", DifferenceMap, DMOptions, "difference map (Thibault et al. 2009), RAAR-relaxed"),
            Algorithm(
                "lsqml", LSQML, LSQMLOptions, "least-squares maximum likelihood (Odstrcil et al. 2018)"
            ),
        )
    }
)
