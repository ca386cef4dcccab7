"""ssl stage of drasclr_toolkit."""
