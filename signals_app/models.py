from django.db import models


class IdentityLink(models.Model):
    """An anonymous session joined to a user (at login): the session's history belongs to the user from then on."""

    session_id = models.CharField(max_length=200, unique=True)
    user_id = models.CharField(max_length=200, db_index=True)
    linked_at = models.DateTimeField()

    class Meta:
        ordering = ["-linked_at"]

    def __str__(self) -> str:
        return f"{self.session_id} -> {self.user_id}"


class DeadLetter(models.Model):
    """A stream entry that could not be stored in the log, kept for staff to inspect and replay."""

    stream = models.CharField(max_length=100)
    entry_id = models.CharField(max_length=50)
    payload = models.TextField()
    error = models.TextField()
    deliveries = models.PositiveIntegerField(default=1, help_text="How many times the consumer tried to store it.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when staff put the entry back on its stream (signals_app.services.dead_letters_replay).
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "dead-lettered event"
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["stream", "entry_id"], name="dead_letter_unique_entry")]

    def __str__(self) -> str:
        return f"{self.stream} {self.entry_id}"
