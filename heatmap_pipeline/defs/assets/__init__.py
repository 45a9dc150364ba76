"""Software-defined assets, group ``game_analytics``: one module per asset, with its checks."""
