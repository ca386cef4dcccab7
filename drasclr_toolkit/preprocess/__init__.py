"""preprocess stage of drasclr_toolkit."""
