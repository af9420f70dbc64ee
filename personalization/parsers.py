"""The API's JSON parser: DRF's, within the bounds of personalization.validation.json_limits_check, so a body
nested too deep or holding a too-wide integer is a 400 naming where, before any serializer or encoder sees it."""

from __future__ import annotations

import codecs
import json
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser
from rest_framework.utils.json import strict_constant

from personalization.validation import JSON_MAX_DEPTH, JsonLimitExceeded, json_limits_check


class BoundedJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
            value = json.loads(text, parse_constant=strict_constant)
        except RecursionError as error:  # deeper than Python's parser goes: far past the bound
            raise JsonLimitExceeded("", f"Must not be nested deeper than {JSON_MAX_DEPTH} levels.") from error
        except ValueError as error:
            raise ParseError(f"JSON parse error - {error}") from error
        json_limits_check(value, stored=False)  # fields that store JSON hold their values to more
        return value
