-- The compose file's PostgreSQL holds two databases: `game` (the game's events table and the
-- pipeline's warehouse tables, as with one DATABASE_URL) and `dagster` (the Dagster instance).
-- In a real deployment DATABASE_URL points at the game's own database instead.
CREATE DATABASE dagster;
