from django.core.management.base import BaseCommand, CommandError, CommandParser

from personalization.errors import ApplicationError
from personalization.models import ApiScope
from personalization.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a storefront. The key is printed once, as the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who the key is for, e.g. 'web storefront'.")
        parser.add_argument(
            "--scope",
            choices=ApiScope.values,
            default=ApiScope.SERVER,
            help="public: safe in a web page (recommendations, similar items, WebSocket, events); server (default): "
            "a storefront's back end; admin: also the operators' endpoints (metrics).",
        )
        parser.add_argument(
            "--rate", type=int, default=None, help="Requests a second (default: the scope's, API_RATE_LIMIT_*)."
        )
        parser.add_argument(
            "--shopper-token",
            action="store_true",
            help="Public keys: require X-Shopper-Token, binding each call to the shopper it signs.",
        )

    def handle(self, *args: object, name: str, scope: str, rate: int | None, **options: object) -> None:
        try:
            created = api_key_create(
                name=name,
                scope=scope,
                rate_limit_per_second=rate,
                requires_shopper_token=bool(options["shopper_token"]),
            )
        except ApplicationError as error:
            raise CommandError(error.message) from error
        key = created.api_key
        self.stderr.write(f"Created {key.scope} API key '{key.name}' ({key.prefix}…). Store it now:")
        self.stdout.write(created.raw_key)
