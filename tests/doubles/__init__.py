"""Test doubles for systems that cannot run here (scanners, Kubernetes), each speaking its real protocol.

A double is a real server (loopback TCP or a Unix socket) that the real client
library talks to unchanged; each module documents which parts of the protocol
it implements and which it does not.
"""
