from django.db import models


class Event(models.Model):
    """The durable log of what shoppers did. `event_id` is the client's idempotency key."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=50)
    user_id = models.CharField(max_length=200, blank=True, default="")
    session_id = models.CharField(max_length=200, blank=True, default="")
    item_id = models.CharField(max_length=200, blank=True, default="")
    placement = models.CharField(max_length=100, blank=True, default="")
    request_id = models.CharField(max_length=100, blank=True, default="")
    value = models.FloatField(null=True, blank=True)
    context = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-occurred_at"]
        indexes = [
            models.Index(fields=["user_id", "occurred_at"], name="event_user_time"),
            models.Index(fields=["item_id", "occurred_at"], name="event_item_time"),
            models.Index(fields=["occurred_at"], name="event_time"),
        ]
        constraints = [
            models.CheckConstraint(condition=~models.Q(user_id="", session_id=""), name="event_has_user_or_session")
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type} {self.user_id or self.session_id} {self.item_id}"
