"""adaptive-spec: speculative decoding that decides, per request and per round, whether it pays off."""

__version__ = "0.1.0"
