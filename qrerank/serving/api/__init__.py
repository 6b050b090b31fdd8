"""The HTTP APIs, one module per family of clients; `register` adds every family's routes to a router.

service.py holds what they share: reading bodies, model names, limits, prompts and the calls to the engine.
"""

from __future__ import annotations

from fastapi import APIRouter

from qrerank.serving.api import cohere, deepinfra, openai, tei, vllm
from qrerank.serving.api.service import Service

__all__ = ["Service", "register"]


def register(router: APIRouter, service: Service) -> None:
    for family in (openai, cohere, tei, vllm, deepinfra):
        family.register(router, service)
