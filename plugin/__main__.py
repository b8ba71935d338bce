"""`python -m bnncube`."""

from bnncube.cli import console_main

console_main()
