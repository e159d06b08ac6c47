"""shiftaudit: measure how an image classifier responds to translation.

The engine is a pure library (torch, onnxruntime, numpy, Pillow, pydantic); the web
service and the workers build on it, never the other way round.
"""

__version__ = "0.1.0"
