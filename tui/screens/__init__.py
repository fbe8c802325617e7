"""Modal screens: forms, confirmations and details."""
