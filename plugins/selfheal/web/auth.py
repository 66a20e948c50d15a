"""Airflow's own authentication, reused by the plugin app.

The API server mounts plugin apps without any authentication of their own,
so each route must ask for it. We use exactly what Airflow's core API routes
use: ``airflow.api_fastapi.core_api.security.get_user`` validates the JWT
from the ``Authorization: Bearer`` header or, for the browser, the ``_token``
cookie the login page sets (missing -> 401, invalid -> 403, expired -> 401);
then the auth manager decides whether that user may see our pages
(``is_authorized_custom_view``, the hook auth managers offer for plugin
resources; the simple auth manager allows any role from viewer up).

Imported lazily (inside ``airflow_auth``): Airflow's security module pulls in
the ORM models and takes seconds to import, which every Airflow process that
loads plugins would otherwise pay; the API server has it loaded already.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

RESOURCE_NAME = "selfheal"


@dataclass(frozen=True)
class Auth:
    """How the app authenticates: a dependency that returns the user or raises 401/403,
    one that returns the user or None (for pages, which redirect to the login page instead),
    and the login page URL."""

    require_user: Callable[..., Any]
    page_user: Callable[..., Any]
    login_url: Callable[[str], str]


def airflow_auth() -> Auth:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import get_user

    bearer = HTTPBearer(auto_error=False)

    def _authorize(user: Any) -> Any:
        if not get_auth_manager().is_authorized_custom_view(
            method="GET", resource_name=RESOURCE_NAME, user=user
        ):
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"not allowed to read {RESOURCE_NAME}")
        return user

    async def require_user(user: Any = Depends(get_user)) -> Any:  # noqa: B008 - FastAPI's dependency idiom
        return _authorize(user)

    async def page_user(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> Any:
        try:
            # get_user(request, oauth_token, bearer_credentials): the oauth token is only its docs hook.
            user = await get_user(request, None, credentials)
        except HTTPException:
            return None  # not logged in: the page redirects to the login page
        return _authorize(user)  # logged in but not allowed: 403, not a login loop

    def login_url(next_url: str) -> str:
        return get_auth_manager().get_url_login(next_url=next_url)

    return Auth(require_user=require_user, page_user=page_user, login_url=login_url)
