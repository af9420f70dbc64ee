"""The event and impression logs, the bandit's decision log and custom event types join the online state they feed
(`graph_app.state`): a move of Django's state only, their tables (and partitions) stay as they are. Their content
types follow them, so the permissions staff hold on them stay granted."""

from django.db import migrations, models

MOVED = ("banditdecision", "customeventtype", "event", "eventid", "impression")


def _content_types_move(apps, schema_editor, *, source, target):
    content_type = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    content_type.objects.using(db).filter(app_label=target, model__in=MOVED).delete()  # made by a run before
    content_type.objects.using(db).filter(app_label=source, model__in=MOVED).update(app_label=target)


def content_types_forward(apps, schema_editor):
    _content_types_move(apps, schema_editor, source="signals_app", target="graph_app")


def content_types_backward(apps, schema_editor):
    _content_types_move(apps, schema_editor, source="graph_app", target="signals_app")


class Migration(migrations.Migration):

    dependencies = [
        ('graph_app', '0010_modelversion_from_scoring'),
        ('signals_app', '0009_dead_letter_replayed_at'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='BanditDecision',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('request_id', models.CharField(max_length=100, unique=True)),
                        ('placement', models.CharField(max_length=100)),
                        ('served_at', models.DateTimeField(db_index=True)),
                        ('shared', models.TextField()),
                        ('actions', models.JSONField(default=list)),
                    ],
                    options={
                        'db_table': 'signals_app_banditdecision',
                        'ordering': ['-served_at'],
                    },
                ),
                migrations.CreateModel(
                    name='EventId',
                    fields=[
                        ('event_id', models.CharField(max_length=100, primary_key=True, serialize=False)),
                        ('occurred_at', models.DateTimeField()),
                    ],
                    options={
                        'verbose_name': 'event id',
                        'db_table': 'signals_app_eventid',
                    },
                ),
                migrations.CreateModel(
                    name='CustomEventType',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.SlugField(unique=True)),
                        ('description', models.CharField(blank=True, default='', max_length=300)),
                        ('needs_item', models.BooleanField(default=True)),
                        ('popularity_weight', models.FloatField(default=0.0, help_text='0 leaves popularity and affinities alone.')),
                        ('marks_interest', models.BooleanField(default=False, help_text="Whether the item joins the user's recent items.")),
                    ],
                    options={
                        'db_table': 'signals_app_customeventtype',
                        'ordering': ['name'],
                        'constraints': [models.CheckConstraint(condition=models.Q(('popularity_weight__gte', 0)), name='custom_type_weight_not_negative')],
                    },
                ),
                migrations.CreateModel(
                    name='Event',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('event_id', models.CharField(max_length=100)),
                        ('type', models.CharField(max_length=50)),
                        ('user_id', models.CharField(blank=True, default='', max_length=200)),
                        ('session_id', models.CharField(blank=True, default='', max_length=200)),
                        ('item_id', models.CharField(blank=True, default='', max_length=200)),
                        ('placement', models.CharField(blank=True, default='', max_length=100)),
                        ('request_id', models.CharField(blank=True, default='', max_length=100)),
                        ('slot', models.IntegerField(blank=True, null=True)),
                        ('value', models.FloatField(blank=True, null=True)),
                        ('context', models.JSONField(blank=True, default=dict)),
                        ('occurred_at', models.DateTimeField()),
                        ('received_at', models.DateTimeField(auto_now_add=True)),
                        ('attributed_placement', models.CharField(blank=True, default='', max_length=100)),
                        ('attributed_slot', models.IntegerField(blank=True, null=True)),
                        ('attributed_model_version', models.CharField(blank=True, default='', max_length=60)),
                        ('attributed_score', models.FloatField(blank=True, null=True)),
                        ('attributed_source', models.CharField(blank=True, default='', max_length=30)),
                    ],
                    options={
                        'db_table': 'signals_app_event',
                        'ordering': ['-occurred_at'],
                        'indexes': [models.Index(fields=['user_id', 'occurred_at'], name='event_user_time'), models.Index(fields=['item_id', 'occurred_at'], name='event_item_time'), models.Index(fields=['occurred_at'], name='event_time'), models.Index(fields=['event_id'], name='event_event_id'), models.Index(condition=models.Q(('attributed_slot__isnull', False)), fields=['occurred_at'], include=('type', 'request_id', 'attributed_slot', 'item_id', 'value'), name='event_attributed_time')],
                        'constraints': [models.CheckConstraint(condition=models.Q(('session_id', ''), ('user_id', ''), _negated=True), name='event_has_user_or_session')],
                    },
                ),
                migrations.CreateModel(
                    name='Impression',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('request_id', models.CharField(max_length=100)),
                        ('user_key', models.CharField(max_length=220)),
                        ('placement', models.CharField(max_length=100)),
                        ('item_id', models.CharField(max_length=200)),
                        ('slot', models.PositiveIntegerField()),
                        ('score', models.FloatField(null=True)),
                        ('source', models.CharField(blank=True, default='', max_length=30)),
                        ('model_version', models.CharField(blank=True, default='', max_length=60)),
                        ('variant', models.CharField(blank=True, default='', max_length=20)),
                        ('rules', models.JSONField(blank=True, default=list)),
                        ('path', models.CharField(blank=True, default='', max_length=20)),
                        ('served_at', models.DateTimeField()),
                        ('propensity', models.FloatField(blank=True, null=True)),
                        ('bandit_cost', models.FloatField(blank=True, null=True)),
                    ],
                    options={
                        'db_table': 'signals_app_impression',
                        'ordering': ['-served_at'],
                        'indexes': [models.Index(fields=['placement', 'item_id', 'served_at'], name='impression_placement_item'), models.Index(fields=['served_at'], include=('placement',), name='impression_served_time'), models.Index(condition=models.Q(('bandit_cost__isnull', True), ('propensity__isnull', False)), fields=['served_at'], name='impression_bandit_pending')],
                        'constraints': [models.UniqueConstraint(fields=('request_id', 'slot', 'served_at'), name='impression_unique_slot')],
                    },
                ),
            ],
        ),
        migrations.RunPython(content_types_forward, content_types_backward),
    ]
