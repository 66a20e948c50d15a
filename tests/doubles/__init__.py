"""Test doubles for scanners that cannot run here, each speaking the scanner's real wire protocol.

A double is a real server (loopback TCP or a Unix socket) that the real client
library talks to unchanged; each module documents which parts of the protocol
it implements and which it does not.
"""
