"""drasclr_toolkit: DrasCLR self-supervised representation learning for 3D lung CT.

Stages (each a plain function with files in and files out, a CLI sub-command and a
notebook): ``data`` → ``preprocess`` → ``train`` (with ``models`` and ``ssl``) → ``embed`` →
``viz`` / ``evaluate``.
"""

__version__ = "0.1.0"
