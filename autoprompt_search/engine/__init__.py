"""The prompt engine: a frozen backbone run block by block with prompt slots, heads, the prefix cache."""
