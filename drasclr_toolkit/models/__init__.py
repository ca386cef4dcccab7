"""models stage of drasclr_toolkit."""
