"""LAMANAS research core: MetaNAS (DARTS + Reptile/MAML) with learned task losses.

Pure PyTorch, usable alone (`python -m model ...`); never imports backend or webapp.
"""
