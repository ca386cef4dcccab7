"""The ``drasclr`` command line: one sub-command per stage."""
