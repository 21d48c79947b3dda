"""`python -m mitoscope.cli ...`, as the Makefile and the tests call it."""

from mitoscope.cli import run

run()
