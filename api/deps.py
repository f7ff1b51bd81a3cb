"""FastAPI dependencies: the services and the caller's API key (Bearer token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.services import Services
from service.keys import authenticate
from service.models import ApiKey

bearer = HTTPBearer(auto_error=False, description="an API key from `nerfserve keys create NAME`")


def services(request: Request) -> Services:
    return request.app.state.services


def current_key(svc: Annotated[Services, Depends(services)],
                cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
    challenge = {"WWW-Authenticate": "Bearer"}
    if cred is None or cred.scheme.lower() != "bearer":
        raise ApiError(401, "missing_api_key", "this endpoint needs an API key",
                       "send 'Authorization: Bearer <key>'; an admin creates one with `nerfserve keys create NAME`",
                       challenge)
    key = authenticate(svc.db, cred.credentials.strip())
    if key is None:
        raise ApiError(401, "invalid_api_key", "the API key is unknown or revoked",
                       "check the key, or ask an admin for a new one (`nerfserve keys create NAME`)", challenge)
    return key


Svc = Annotated[Services, Depends(services)]
Key = Annotated[ApiKey, Depends(current_key)]


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")
