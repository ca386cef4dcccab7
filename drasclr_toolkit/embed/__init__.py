"""embed stage of drasclr_toolkit."""
