"""fastreg: a SIP registrar and location service (RFC 3261 section 10)."""

__version__ = "0.1.0"
