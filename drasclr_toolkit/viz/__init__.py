"""viz stage of drasclr_toolkit."""
