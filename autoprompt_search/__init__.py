"""autoprompt-search: find where and how to prompt-tune a frozen transformer."""

__version__ = "0.1.0"
