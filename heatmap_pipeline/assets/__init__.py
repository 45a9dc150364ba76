"""Software-defined assets, group ``game_analytics``. Each module is short: fetch, call, write, report."""

GROUP = "game_analytics"
