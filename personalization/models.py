from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


class ApiScope(models.TextChoices):
    """What a key may do; each scope includes the ones before it (admin ⊇ server ⊇ public)."""

    PUBLIC = "public", "public: recommendations, similar items, WebSocket, event ingest (safe in a web page)"
    SERVER = "server", "server: everything a storefront's back end does (catalog, users' traits)"
    ADMIN = "admin", "admin: the console's API and the operators' (metrics)"


SCOPE_RANKS = {ApiScope.PUBLIC: 0, ApiScope.SERVER: 1, ApiScope.ADMIN: 2}


class ApiKey(models.Model):
    """A storefront's credential. Only a SHA-256 of the key is stored; the key itself is shown once."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, help_text="Public part of the key, for lookup.")
    hashed_key = models.CharField(max_length=64, unique=True)
    scope = models.CharField(max_length=10, choices=ApiScope.choices, default=ApiScope.SERVER)
    rate_limit_per_second = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests a second this key may make (bursts up to as many at once). Empty: its scope's default.",
    )
    requires_shopper_token = models.BooleanField(
        default=False,
        help_text="Public keys: every call names one shopper and carries X-Shopper-Token, the HMAC-SHA256 of that "
        "shopper's id with SHOPPER_TOKEN_SECRET; a call for another shopper is refused (403).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(scope__in=ApiScope.values), name="api_key_scope_known"),
            models.CheckConstraint(
                condition=models.Q(rate_limit_per_second__isnull=True) | models.Q(rate_limit_per_second__gt=0),
                name="api_key_rate_limit_positive",
            ),
        ]

    def __str__(self) -> str:
        state = "revoked" if self.revoked_at else "active"
        return f"{self.name} ({self.prefix}…, {self.scope}, {state})"

    def clean(self) -> None:
        if self.requires_shopper_token and self.scope != ApiScope.PUBLIC:
            raise ValidationError({"requires_shopper_token": "Only a public key is bound to shoppers."})
        if self.requires_shopper_token and not settings.SHOPPER_TOKEN_SECRET:
            raise ValidationError(
                {"requires_shopper_token": "Set SHOPPER_TOKEN_SECRET first: tokens are signed with it."}
            )

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
