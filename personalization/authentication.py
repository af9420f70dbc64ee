from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from personalization.services import ApiClient, api_key_verify


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <api key>`; a storefront, not a person, so request.user stays None."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiClient] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not raw_key.strip():
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        client = api_key_verify(raw_key=raw_key.strip())
        if client is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        return (None, client)

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class IsApiClientOrStaff(permissions.BasePermission):
    """A storefront with an API key, or a staff member logged in to the console (the demo page, previews)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if isinstance(request.auth, ApiClient):
            return True
        user = request.user
        return bool(user is not None and user.is_authenticated and user.is_staff)
