"""The PyTorch handler that multi-model-server workers run, one model per worker process.

MMS imports ``handler.entry:handle`` (the function form, so that load errors
surface at LoadModel time). Importing this package itself is cheap: torch is
imported by the modules that need it, when the worker loads a model.
"""
