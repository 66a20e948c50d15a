"""Demo target API for selfheal: a small item catalogue with deliberate, documented vulnerabilities.

See README.md for the list of vulnerabilities and the request that exploits each one.
"""

__version__ = "1.0.0"
