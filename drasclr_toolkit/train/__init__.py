"""train stage of drasclr_toolkit."""
