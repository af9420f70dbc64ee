from django.core.management.base import BaseCommand, CommandParser

from personalization.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a storefront. The key is printed once, as the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who the key is for, e.g. 'web storefront'.")

    def handle(self, *args: object, name: str, **options: object) -> None:
        created = api_key_create(name=name)
        self.stderr.write(f"Created API key '{created.api_key.name}' ({created.api_key.prefix}…). Store it now:")
        self.stdout.write(created.raw_key)
