"""Reads and writes of the warehouse tables, one module per asset. No Dagster here."""
