"""data stage of drasclr_toolkit."""
