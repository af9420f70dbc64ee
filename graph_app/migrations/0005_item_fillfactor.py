"""Half-filled pages for the catalog: a price or stock change then finds room on its row's page for the new row
version, which PostgreSQL writes as a heap-only update, without a new entry in every index, the HNSW index of the
embeddings above all (about 2 ms an entry at 100,000 items). A batch of 1,000 price changes: 1.8 s before, 0.15 s
after (BENCHMARKS.md, "Catalog writes in bulk"). The table takes about 1.6 times the pages. Existing pages keep
their fill until rewritten: run `VACUUM FULL graph_app_item` once (it locks the table) to apply it to them."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("graph_app", "0004_materialization_cursor")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE graph_app_item SET (fillfactor = 50)",
            reverse_sql="ALTER TABLE graph_app_item RESET (fillfactor)",
        )
    ]
