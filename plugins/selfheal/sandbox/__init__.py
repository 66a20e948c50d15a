"""Sandbox: build patched images and verify them in isolated containers."""

# The offline base image (include/sandbox/base-image/build.sh); on a machine
# with internet the Dockerfiles take BASE_IMAGE=python:3.11-slim instead.
DEFAULT_BASE_IMAGE = "selfheal/base:bookworm"
