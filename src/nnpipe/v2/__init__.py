"""nnU-Net v2 trained models in nnpipe: read as they are, predicted with v2's semantics.

``plans`` reads plans.json / dataset.json, ``network`` builds PlainConvUNet /
ResidualEncoderUNet with v2's parameter names, ``checkpoint`` loads weights without
unpickling code, ``semantics`` holds v2's rules as data and pure functions, ``model``
resolves a folder or zip, ``predict`` runs a case end to end. nnU-Net is never imported.
"""
