"""The databases, without Dagster: engines (db), our tables (tables) and their migrations, the source
(source), the ETL (etl/), and the SQL behind each asset and check (sessions, heatmaps, invariants)."""
