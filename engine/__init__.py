"""A persisted, step-by-step state machine that onboards AWS IAM users."""

__version__ = "0.1.0"
