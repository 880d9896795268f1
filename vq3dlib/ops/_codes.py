"""The integer codes of the C++ enums, mirrored once for the Python side of the kernels.

Each table maps an option's name to the value of its enumerator in ``csrc/include/vq3dlib/``
(``tests/test_ops_codes.py`` reads the headers and checks that they agree). The ops translate their
string options with these tables before calling a kernel; the references of the ops take the same
codes where they mirror a kernel's arguments.

Example:
    >>> CONTRACTION_CODES["linf"], SPACING_CODES["contracted"]
    (2, 1)
"""

from __future__ import annotations

#: ``enum Contraction`` of ``contraction.h``
CONTRACTION_CODES: dict[str, int] = {"none": 0, "l2": 1, "linf": 2, "axis": 3}
#: ``enum Padding`` of ``bilinear.h``
PADDING_CODES: dict[str, int] = {"zeros": 0, "border": 1}
#: ``enum Reduce`` of ``triplane.h``
REDUCE_CODES: dict[str, int] = {"sum": 0, "mean": 1, "concat": 2}
#: ``enum Spacing`` of ``march.h``
SPACING_CODES: dict[str, int] = {"t": 0, "contracted": 1}

#: header file and enum name of each table (for the test that compares them)
HEADERS: dict[str, tuple[str, str, dict[str, int]]] = {
    "contraction": ("contraction.h", "Contraction", CONTRACTION_CODES),
    "padding": ("bilinear.h", "Padding", PADDING_CODES),
    "reduce": ("triplane.h", "Reduce", REDUCE_CODES),
    "spacing": ("march.h", "Spacing", SPACING_CODES),
}
