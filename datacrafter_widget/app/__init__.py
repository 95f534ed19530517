"""Entry points: the datacrafter CLI, headless runs from a TOML config, and the HTML report."""
