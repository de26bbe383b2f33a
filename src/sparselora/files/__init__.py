"""Files written and read safely: atomic writes, process locks, paths and YAML from user input."""
