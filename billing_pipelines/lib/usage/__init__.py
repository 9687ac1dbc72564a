"""Usage in the warehouse: the ClickHouse tables, the daily query and its schema."""
