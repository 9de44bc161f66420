"""Exact dense Hessians of small networks: H = G + R, their structure, cost and guard."""

from hesskit.dense.builders import Method
from hesskit.dense.cost import (
    MEMORY_FRACTION,
    CostEstimate,
    available_memory,
    check_fits,
    default_memory_budget,
    estimate_cost,
    memory_estimate,
    parse_bytes,
)
from hesskit.dense.evidence import DeadUnit
from hesskit.dense.hessian import DenseHessian, Part, hessian, hessian_of
from hesskit.dense.spectrum import Spectrum, spectrum
from hesskit.dense.structure import (
    BlockStructure,
    StructureReport,
    ZeroReason,
    structure_report,
    zero_reason_codes,
)

__all__ = [
    "MEMORY_FRACTION",
    "BlockStructure",
    "CostEstimate",
    "DeadUnit",
    "DenseHessian",
    "Method",
    "Part",
    "Spectrum",
    "StructureReport",
    "ZeroReason",
    "available_memory",
    "check_fits",
    "default_memory_budget",
    "estimate_cost",
    "hessian",
    "hessian_of",
    "memory_estimate",
    "parse_bytes",
    "spectrum",
    "structure_report",
    "zero_reason_codes",
]
