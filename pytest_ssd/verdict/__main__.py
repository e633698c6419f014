"""``python -m pytest_ssd.verdict judge|cold SPEC``: a verdict's fresh process (:mod:`pytest_ssd.verdict.child`)."""
from .child import main

main()
