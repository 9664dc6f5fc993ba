"""Test helpers for your own suites: conformance checks for every nx protocol, discovery of
implementations, and (in ``nxcore.testing.strategies``, needs hypothesis) strategies that draw
valid schedules, layouts, token grids and named-shape tensors.

    from nxcore.testing import check_output_head
    def test_my_head():
        check_output_head(MyHead(dim=32, vocab_size=100))
"""

from nxcore.testing.discovery import conformance_cases, examples_of, implementations

__all__ = ["conformance_cases", "examples_of", "implementations"]
