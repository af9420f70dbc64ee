"""Every Redis key the platform writes, in one place. `{...}` is a Redis Cluster hash tag."""


def user_recent_items(user_key: str) -> str:
    return f"user:{{{user_key}}}:recent"


def event_seen(event_id: str) -> str:
    return f"event:{{{event_id}}}:seen"


def slate(request_id: str) -> str:
    return f"slate:{{{request_id}}}"


ITEM_POPULARITY = "items:popularity"


def active_model(kind: str) -> str:
    return f"model:active:{kind}"


CUSTOM_EVENT_TYPES = "event-types:custom"
