"""What makes rows and home files trustworthy: row MACs, format and state records, upgrades, home checks."""
