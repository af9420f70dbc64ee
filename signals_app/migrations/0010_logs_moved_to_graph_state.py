"""The logs and custom event types moved to `graph_app.state` (graph_app 0010): Django's state only."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('signals_app', '0009_dead_letter_replayed_at'),
        ('graph_app', '0011_state_logs_from_signals'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(
                    name='BanditDecision',
                ),
                migrations.DeleteModel(
                    name='CustomEventType',
                ),
                migrations.DeleteModel(
                    name='Event',
                ),
                migrations.DeleteModel(
                    name='EventId',
                ),
                migrations.DeleteModel(
                    name='Impression',
                ),
            ],
        ),
    ]
