"""evaluate stage of drasclr_toolkit."""
