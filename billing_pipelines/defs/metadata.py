"""Plain tables from lib/ as Dagster table metadata, which the UI shows with its schema."""

import dagster as dg

from billing_pipelines.lib.tables import Table


def table(data: Table) -> dg.TableMetadataValue:
    """A `Table` as `MetadataValue.table`, its column descriptions in the schema."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord(dict(row)) for row in data.rows],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn(c.name, type=c.type, description=c.description) for c in data.columns
            ]
        ),
    )
